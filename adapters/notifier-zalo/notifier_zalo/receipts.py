"""Zalo's delivery webhook (event ``user_received_message``), verified and read.

Zalo signs each webhook with the header ``X-ZEvent-Signature``::

    mac=<hex sha256(app_id + raw body + timestamp + OA secret key)>

where ``timestamp`` is the body's ``timestamp`` field as sent (milliseconds since the
epoch, as a string). This follows Zalo's SDKs and public integrations; Zalo's own
documentation could not be checked, and one copy of it names the OA id instead of the
app id. So: the "mac=" prefix is optional, and when ``oa_id`` is configured a
signature over the OA id is accepted too (both forms need the OA secret key).

``user_received_message`` is a delivery report; ``user_send_text`` (a user's text to
the OA) is a citizen's inbound message (:func:`parse_inbound`), answered by the core.
Other events (follows, images...) are acknowledged and ignored.

Zalo wants 200 within about 2 s and retries otherwise (after 30 s, 5, 15, 30 and 60
min; a blog reports retries for 12 h, then the webhook turned off). So only what fails
the signature is refused. A correctly signed report is taken whatever its age up to
``receipt_max_age_s`` (default 24 h, to cover retries that keep the first timestamp);
a repeat is a duplicate by the message it reports (``msg_id``, else ``tracking_id``),
acknowledged by the core and not applied again. A correctly signed report older than
the window is acknowledged and ignored: by then its nonce may be purged, and a receipt
that late changes nothing a citizen sees.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from notifier.adapter import (
    InboundMessage,
    InvalidReceipt,
    MalformedReceipt,
    Receipt,
    ReceiptRequest,
)
from notifier.logging import get_logger

from .settings import ZaloSettings

__all__ = ["SIGNATURE_HEADER", "USER_TEXT_EVENT", "parse_inbound", "parse_receipt", "signature"]

log = get_logger(__name__)

SIGNATURE_HEADER = "x-zevent-signature"
DELIVERED_EVENT = "user_received_message"
# A user's text message to the OA: a citizen asking (notifier.pipeline.inbound).
USER_TEXT_EVENT = "user_send_text"
# Milliseconds (or seconds) since the epoch, as Zalo writes them.
_TIMESTAMP = re.compile(r"[0-9]{1,16}(?:\.[0-9]{1,6})?")


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


def verified_event(settings: ZaloSettings, request: ReceiptRequest) -> dict[str, Any] | None:
    """The webhook's event, once its signature and app are checked; None for a GET (Zalo's
    console checking the URL) and for a signed event outside the time window. Raises
    :class:`InvalidReceipt` for anything not signed by Zalo."""
    if request.method.upper() != "POST":
        return None
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
    if not _TIMESTAMP.fullmatch(timestamp):
        raise InvalidReceipt("timestamp is not a number")

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
        # Signed by Zalo, so a 403 would only make Zalo retry (and maybe turn the
        # webhook off); outside the window its nonce may be gone: take it as read.
        log.warning(
            "zalo webhook ignored: its timestamp is outside the window",
            age_s=round(age),
            window_s=settings.receipt_max_age_s,
        )
        return None
    app_id = _field(document, "app_id")
    if app_id is not None and app_id != settings.app_id:
        raise InvalidReceipt("webhook for another Zalo app")
    return document


def parse_receipt(settings: ZaloSettings, request: ReceiptRequest) -> list[Receipt]:
    document = verified_event(settings, request)
    if document is None or _field(document, "event_name") != DELIVERED_EVENT:
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
    # Known by the message it reports, not by its signature: a retry Zalo signs again
    # with a new timestamp is the same report.
    return [
        Receipt(
            delivered=True,
            delivery_id=delivery_id,
            provider_message_id=msg_id,
            nonce=f"{DELIVERED_EVENT}:{msg_id or tracking_id}",
        )
    ]


def parse_inbound(settings: ZaloSettings, request: ReceiptRequest) -> list[InboundMessage]:
    """A user's text to the OA (event ``user_send_text``), verified like a receipt.

    Fields (from public clients; Zalo's own page could not be read, see the README):
    ``sender.id`` (the user, by OA), ``recipient.id`` (the OA), ``message.msg_id``,
    ``message.text``, ``timestamp`` (ms). A repeat of ``msg_id`` is refused by the core.
    Other events (delivery reports, follows, images...) carry no text for us.
    """
    document = verified_event(settings, request)
    if document is None or _field(document, "event_name") != USER_TEXT_EVENT:
        return []
    sender = _field(document, "sender", "id")
    msg_id = _field(document, "message", "msg_id")
    if not sender or not msg_id:
        raise MalformedReceipt("user_send_text without sender.id or message.msg_id")
    timestamp = _field(document, "timestamp") or "0"
    return [
        InboundMessage(
            sender=sender,
            text=_field(document, "message", "text") or "",
            sent_at=datetime.fromtimestamp(_epoch_seconds(timestamp), UTC),
            provider_message_id=f"{USER_TEXT_EVENT}:{msg_id}"[:128],
        )
    ]
