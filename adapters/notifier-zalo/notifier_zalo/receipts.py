"""Zalo's delivery webhook (event ``user_received_message``), verified and read.

Zalo signs each webhook with the header ``X-ZEvent-Signature``::

    mac=<hex sha256(app_id + raw body + timestamp + OA secret key)>

where ``timestamp`` is the body's ``timestamp`` field as sent (milliseconds since the
epoch, as a string). This follows Zalo's SDKs and public integrations; Zalo's own
documentation could not be checked, and one copy of it names the OA id instead of the
app id. So: the "mac=" prefix is optional, and when ``oa_id`` is configured a
signature over the OA id is accepted too (both forms need the OA secret key).

Events other than ``user_received_message`` (messages from users, follows...) are
acknowledged and ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from uuid import UUID

from notifier.adapter import InvalidReceipt, Receipt, ReceiptRequest

from .settings import ZaloSettings

__all__ = ["SIGNATURE_HEADER", "parse_receipt", "signature"]

SIGNATURE_HEADER = "x-zevent-signature"
DELIVERED_EVENT = "user_received_message"


def signature(signer_id: str, body: bytes, timestamp: str, secret: str) -> str:
    """The hex digest Zalo puts after "mac=" in ``X-ZEvent-Signature``."""
    return hashlib.sha256(
        signer_id.encode() + body + timestamp.encode() + secret.encode()
    ).hexdigest()


def _epoch_seconds(timestamp: str) -> float:
    try:
        value = float(timestamp)
    except ValueError:
        raise InvalidReceipt("timestamp is not a number") from None
    # Zalo sends milliseconds; tolerate seconds as well.
    return value / 1000 if value > 1e11 else value


def _field(document: dict[str, Any], *path: str) -> str | None:
    value: Any = document
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if value is None or isinstance(value, dict | list | bool):
        return None
    return str(value)


def parse_receipt(settings: ZaloSettings, request: ReceiptRequest) -> list[Receipt]:
    if request.method.upper() != "POST":
        return []  # a GET from Zalo's console checking the URL: nothing to read
    if settings.oa_secret_key is None:
        raise InvalidReceipt("oa_secret_key is not configured: Zalo webhooks cannot be verified")
    supplied = request.headers.get(SIGNATURE_HEADER, "").strip()
    if supplied[:4].lower() == "mac=":
        supplied = supplied[4:].strip()
    if not supplied:
        raise InvalidReceipt("no X-ZEvent-Signature header")
    try:
        document = json.loads(request.body)
    except ValueError:
        raise InvalidReceipt("body is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidReceipt("body is not a JSON object")
    timestamp = _field(document, "timestamp")
    if not timestamp:
        raise InvalidReceipt("no timestamp in the body")

    secret = settings.oa_secret_key.get_secret_value()
    signers = [settings.app_id] + ([settings.oa_id] if settings.oa_id else [])
    # Check every form, so the time taken does not tell which one matched.
    matches = [
        hmac.compare_digest(
            supplied.lower().encode(), signature(signer, request.body, timestamp, secret).encode()
        )
        for signer in signers
    ]
    if not any(matches):
        raise InvalidReceipt("bad X-ZEvent-Signature")

    age = request.received_at - _epoch_seconds(timestamp)
    if abs(age) > settings.receipt_max_age_s:
        raise InvalidReceipt(
            f"timestamp is {age:.0f}s away from now, over the allowed "
            f"{settings.receipt_max_age_s:g}s"
        )
    app_id = _field(document, "app_id")
    if app_id is not None and app_id != settings.app_id:
        raise InvalidReceipt("webhook for another Zalo app")

    if _field(document, "event_name") != DELIVERED_EVENT:
        return []
    msg_id = _field(document, "message", "msg_id")
    tracking_id = _field(document, "message", "tracking_id")
    delivery_id: UUID | None = None
    if tracking_id:
        try:
            delivery_id = UUID(tracking_id)
        except ValueError:
            delivery_id = None  # not one of ours (sent by another system on this OA)
    if delivery_id is None and not msg_id:
        raise InvalidReceipt("user_received_message without msg_id or tracking_id")
    # The signature covers body and timestamp, so it names this report: a replay of it
    # is refused by the core.
    return [
        Receipt(
            delivered=True,
            delivery_id=delivery_id,
            provider_message_id=msg_id,
            nonce=supplied.lower(),
        )
    ]
