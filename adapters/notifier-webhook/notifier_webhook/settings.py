"""Settings of the webhook adapter (``NOTIFIER_ADAPTERS__WEBHOOK__*``); unknown keys are errors."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from notifier.adapter import AdapterSettings

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookSettings(AdapterSettings):
    """Where the app listens and the secret both sides sign with."""

    url: str = Field(
        description="The app's endpoint; https (http only to loopback or when allowed)."
    )
    secret: SecretStr = Field(
        min_length=32,
        description="Shared HMAC-SHA256 key, 32+ characters (e.g. 32 random bytes, hex).",
    )
    previous_secret: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="While rotating: receipts signed with the old key are still accepted.",
    )
    allow_plain_http: bool = Field(
        default=False, description="Allow an http:// URL to a non-loopback host (closed networks)."
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_connections: int = Field(default=20, ge=1, le=1000)
    # Where the app's answer names its own id for the message (either may be absent).
    message_id_field: str = Field(default="message_id", min_length=1, max_length=64)
    message_id_header: str = Field(default="x-message-id", min_length=1, max_length=64)
    # Receipts: POST /v1/receipts/webhook, signed like our requests, within this window.
    receipt_max_age_s: float = Field(default=300.0, ge=10, le=3600)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (the HMAC secret authenticates us)")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return value

    @model_validator(mode="after")
    def _https_unless_allowed(self) -> WebhookSettings:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.scheme == "http" and not (self.allow_plain_http or _is_loopback(host)):
            raise ValueError(
                "url must use https (set allow_plain_http to send personal data in clear "
                "inside a closed network)"
            )
        return self
