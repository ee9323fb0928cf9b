"""Signed callbacks per Standard Webhooks: secrets, and the three headers that sign a body.

A publisher's callback carries ``webhook-id`` (the status message's id: the receiver's
idempotency key), ``webhook-timestamp`` (Unix seconds when this try was signed) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per valid
secret, separated by spaces, so a receiver that holds either secret accepts the callback
while a rotation is under way. Secrets are ``whsec_`` + base64 of 32 random bytes.

The HMAC itself is the ``standardwebhooks`` package's, the reference implementation the
receivers' own libraries (Node, Java, Go, .NET...) are checked against; it has no
dependencies of its own.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

__all__ = [
    "ID_HEADER",
    "SECRET_PREFIX",
    "SEQUENCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "InvalidSecret",
    "check_secret",
    "new_secret",
    "sign",
    "signed_headers",
]

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
# Not part of Standard Webhooks: the status message's sequence (also in the body), so
# a receiver can drop a stale status before it parses the JSON.
SEQUENCE_HEADER = "notifier-sequence"

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64


class InvalidSecret(ValueError):
    """A secret that is not ``whsec_`` + base64 of 24 to 64 bytes."""


def new_secret() -> str:
    """A fresh signing secret, ``whsec_...`` (shown to the operator once)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_secret(secret: str) -> str:
    """``secret`` if it is a usable Standard Webhooks secret, else :class:`InvalidSecret`."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a signing secret starts with {SECRET_PREFIX!r}")
    try:
        raw = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("a signing secret is base64 after 'whsec_'") from None
    if not 24 <= len(raw) <= 64:
        raise InvalidSecret("a signing secret holds 24 to 64 random bytes")
    return secret


def sign(message_id: str, timestamp: int, body: str, secret: str) -> str:
    """One ``v1,<base64>`` signature of ``body`` with ``secret``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return Webhook(secret).sign(msg_id=message_id, timestamp=moment, data=body)


def signed_headers(
    message_id: str, timestamp: int, body: str, secrets_: Sequence[str]
) -> dict[str, str]:
    """The Standard Webhooks headers for one try: a signature per valid secret."""
    if not secrets_:
        raise InvalidSecret("no signing secret")
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(sign(message_id, timestamp, body, s) for s in secrets_),
    }
