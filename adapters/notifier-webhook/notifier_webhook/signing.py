"""The signature scheme, both ways: notifier signs what it POSTs to the app, and the app
signs the delivery receipts it POSTs back.

::

    X-Notifier-Timestamp: 1764124200
    X-Notifier-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

The timestamp is whole seconds since the epoch, as a decimal string. The signature
covers the exact bytes of the body, so verify before parsing, compare in constant
time, and refuse timestamps outside a window (replays). This module has no
dependency on notifier: a Python app can copy it as is.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNATURE_PREFIX",
    "TIMESTAMP_HEADER",
    "BadSignature",
    "sign",
    "signature_header",
    "verify",
]

SIGNATURE_HEADER = "X-Notifier-Signature"
TIMESTAMP_HEADER = "X-Notifier-Timestamp"
SIGNATURE_PREFIX = "sha256="


class BadSignature(Exception):
    """The signature, its timestamp or the header's form is not acceptable."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    message = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return SIGNATURE_PREFIX + sign(secret, timestamp, body)


def verify(
    secrets: Iterable[str],
    *,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    max_age_s: float,
) -> int:
    """Check a signed request; return its timestamp or raise :class:`BadSignature`.

    ``secrets`` are tried in turn (the current one and, while rotating, the previous).
    """
    if not timestamp or not signature:
        raise BadSignature("missing signature or timestamp header")
    text = timestamp.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise BadSignature("timestamp is not whole seconds since the epoch")
    stamp = int(text)
    if abs(now - stamp) > max_age_s:
        raise BadSignature(f"timestamp is outside the {max_age_s:g}s window")
    supplied = signature.strip()
    if not supplied.lower().startswith(SIGNATURE_PREFIX):
        raise BadSignature(f"signature must start with {SIGNATURE_PREFIX!r}")
    digest = supplied[len(SIGNATURE_PREFIX) :].strip().lower()
    for secret in secrets:
        if hmac.compare_digest(
            digest.encode("ascii", "replace"), sign(secret, stamp, body).encode()
        ):
            return stamp
    raise BadSignature("signature does not match")
