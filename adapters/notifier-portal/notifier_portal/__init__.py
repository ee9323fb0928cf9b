"""The portal inbox channel: notifications the Public Service Portal shows its users."""

from notifier_portal.adapter import PortalInboxAdapter, PortalSettings

__all__ = ["PortalInboxAdapter", "PortalSettings"]
