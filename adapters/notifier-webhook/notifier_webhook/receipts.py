"""Delivery receipts from the app: ``POST /v1/receipts/webhook``, signed like our requests.

Body: one receipt, or up to 100 as ``{"receipts": [...]}``::

    {"delivery_id": "<the delivery id we sent>", "delivered": true}
    {"delivery_id": "...", "delivered": false, "error": "app uninstalled", "error_code": "gone"}

Headers: ``X-Notifier-Timestamp`` and ``X-Notifier-Signature`` computed over the raw
body with the same shared secret (see :mod:`notifier_webhook.signing`). Receipts
older (or newer) than ``receipt_max_age_s`` are refused, which bounds replays; a
replay inside the window changes nothing, as a receipt only moves a sent delivery.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from notifier.adapter import InvalidReceipt, Receipt, ReceiptRequest
from notifier.masking import scrub

from .settings import WebhookSettings
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, BadSignature, verify

__all__ = ["MAX_RECEIPTS", "read_receipts"]

MAX_RECEIPTS = 100


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidReceipt("error and error_code must be strings")
    return scrub(str(value))[:limit] or None


def _receipt(item: Any) -> Receipt:
    if not isinstance(item, dict):
        raise InvalidReceipt("each receipt must be a JSON object")
    try:
        delivery_id = UUID(str(item["delivery_id"]))
    except (KeyError, ValueError):
        raise InvalidReceipt("delivery_id must be the delivery id we sent") from None
    delivered = item.get("delivered")
    if not isinstance(delivered, bool):
        raise InvalidReceipt("delivered must be true or false")
    return Receipt(
        delivered=delivered,
        delivery_id=delivery_id,
        error=_text(item.get("error"), 200),
        error_code=_text(item.get("error_code"), 64),
    )


def read_receipts(settings: WebhookSettings, request: ReceiptRequest) -> list[Receipt]:
    if request.method.upper() != "POST":
        raise InvalidReceipt("receipts are POSTed")
    secrets = [settings.secret.get_secret_value()]
    if settings.previous_secret is not None:
        secrets.append(settings.previous_secret.get_secret_value())
    try:
        verify(
            secrets,
            timestamp=request.headers.get(TIMESTAMP_HEADER.lower()),
            signature=request.headers.get(SIGNATURE_HEADER.lower()),
            body=request.body,
            now=request.received_at,
            max_age_s=settings.receipt_max_age_s,
        )
    except BadSignature as exc:
        raise InvalidReceipt(str(exc)) from None
    try:
        document = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidReceipt("body is not JSON") from None
    if isinstance(document, dict) and "receipts" in document:
        items = document["receipts"]
        if not isinstance(items, list):
            raise InvalidReceipt("receipts must be a list")
    elif isinstance(document, dict):
        items = [document]
    else:
        raise InvalidReceipt("body must be a JSON object")
    if len(items) > MAX_RECEIPTS:
        raise InvalidReceipt(f"at most {MAX_RECEIPTS} receipts per request")
    return [_receipt(item) for item in items]
