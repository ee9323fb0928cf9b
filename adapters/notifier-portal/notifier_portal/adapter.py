"""Stores a notification in the citizen's portal inbox (served by ``notifier api``).

The inbox is notifier's own store, so a send is a database insert keyed by the
delivery id: repeating it stores nothing twice, and success is final delivery.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from notifier.adapter import (
    Adapter,
    AdapterSettings,
    OutboundMessage,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
)


class PortalSettings(AdapterSettings):
    title_max_length: int = Field(default=300, ge=20, le=300)


class PortalInboxAdapter(Adapter[PortalSettings]):
    name = "portal"
    channel = "portal"
    description = "Public Service Portal inbox (stored here, served over HTTP)"
    settings_model = PortalSettings
    recipient_kind = RecipientKind.PORTAL_ACCOUNT
    template_parts = (
        TemplatePart("title", max_length=300),
        TemplatePart("body"),
        TemplatePart("link"),
    )

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            # The store is synchronous; keep the adapters' event loop free.
            notification_id = await asyncio.to_thread(
                self.context.inbox.add,
                delivery_id=message.delivery_id,
                account_id=message.recipient,
                agency_code=message.agency_code,
                dossier_code=message.dossier_code,
                status=message.status,
                title=message.parts["title"][: self.settings.title_max_length],
                body=message.parts["body"],
                link=message.parts.get("link") or None,
            )
        except Exception as exc:  # the database is down or busy: try again later
            raise TemporaryFailure(f"inbox store unavailable: {type(exc).__name__}") from exc
        return SendResult(provider_message_id=f"inbox-{notification_id}", delivered=True)
