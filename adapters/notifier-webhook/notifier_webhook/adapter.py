"""The ``app_push`` channel: a signed JSON POST to a province's own mobile app.

Registered as ``webhook`` in the ``notifier.adapters`` entry-point group. Each
message is one POST of :func:`payload` to ``settings.url`` with::

    Content-Type: application/json; charset=utf-8
    Idempotency-Key: <delivery id>            # the same on every retry of a delivery
    X-Notifier-Timestamp: <epoch seconds>
    X-Notifier-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

How the app's answer is read:

==========================  ==========================================================
2xx                         sent; the app's id for it from the JSON field
                            ``message_id_field`` or the header ``message_id_header``
408, 425, 429, 5xx          temporary: retried later (Retry-After honoured)
timeouts, connection errors temporary
401, 403                    permanent + operator alert: our secret or the app's key is
                            wrong (the worker fails over to the next provider, if any)
404, 405, 3xx               permanent + operator alert: the URL is wrong
other 4xx (400, 410, 422)   permanent: the app cannot take this message (e.g. unknown
                            account); the core then tries the routing's fallback channel
==========================  ==========================================================
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx

from notifier.adapter import (
    Adapter,
    AdapterContext,
    Health,
    OutboundMessage,
    PermanentFailure,
    Receipt,
    ReceiptRequest,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
)
from notifier.logging import get_logger

from .receipts import read_receipts
from .settings import WebhookSettings
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_header

__all__ = ["WebhookAdapter", "payload", "retry_after_seconds"]

log = get_logger(__name__)

USER_AGENT = "notifier-webhook/0.1"
_RETRYABLE = frozenset({408, 425, 429})
_OUR_CREDENTIALS = frozenset({401, 403})
_WRONG_URL = frozenset({404, 405})
_MAX_RETRY_AFTER_S = 3600.0


TITLE_MAX, BODY_MAX, LINK_MAX = 120, 500, 2000


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters; a cut text ends with an ellipsis. Templates are
    checked against these limits at start-up, but a long reason in an event may still
    overflow them: the app gets what the README promises, and the link has the rest."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def payload(message: OutboundMessage) -> dict[str, Any]:
    """The JSON document the app receives (documented in the package README)."""
    link = message.parts.get("link") or ""
    return {
        "delivery_id": str(message.delivery_id),
        "event_id": str(message.event_id),
        "account_id": message.recipient,
        "dossier_code": message.dossier_code,
        "agency_code": message.agency_code,
        "status": message.status,
        "language": message.language,
        "title": _clip(message.parts.get("title", ""), TITLE_MAX),
        "body": _clip(message.parts.get("body", ""), BODY_MAX),
        "link": link if link and len(link) <= LINK_MAX else None,
    }


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent/unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), _MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return min(max((when - reference).total_seconds(), 0.0), _MAX_RETRY_AFTER_S)


def _provider_message_id(response: httpx.Response, settings: WebhookSettings) -> str | None:
    if "json" in response.headers.get("content-type", ""):
        try:
            document = response.json()
        except ValueError:
            document = None
        if isinstance(document, dict):
            value = document.get(settings.message_id_field)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)[:200]
    header = response.headers.get(settings.message_id_header, "").strip()
    return header[:200] or None


class WebhookAdapter(Adapter[WebhookSettings]):
    """POSTs each notification as signed JSON to the app's own endpoint."""

    name: ClassVar[str] = "webhook"
    channel: ClassVar[str] = "app_push"
    description: ClassVar[str] = (
        "Signed JSON webhook (HMAC-SHA256) to a province's own mobile app, which pushes it "
        "to the citizen's portal account; optional signed delivery receipts"
    )
    settings_model = WebhookSettings
    recipient_kind: ClassVar[RecipientKind] = RecipientKind.PORTAL_ACCOUNT
    template_parts: ClassVar[tuple[TemplatePart, ...]] = (
        TemplatePart("title", max_length=TITLE_MAX),
        TemplatePart("body", max_length=BODY_MAX),
        TemplatePart("link", max_length=LINK_MAX),
    )
    accepts_receipts: ClassVar[bool] = True

    def __init__(self, settings: WebhookSettings, context: AdapterContext) -> None:
        super().__init__(settings, context)
        # Made on first use, on the loop that runs the sends (the adapter is built
        # before, outside that loop).
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_in_flight(self) -> int:
        return self.settings.max_connections

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            self._client = None  # its connections belong to a loop that is gone
        if self._client is None:
            self._client = self.context.http_client(
                timeout=httpx.Timeout(self.settings.timeout_s),
                limits=httpx.Limits(
                    max_connections=self.settings.max_connections,
                    max_keepalive_connections=self.settings.max_connections,
                ),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
            self._client_loop = loop
        return self._client

    async def send(self, message: OutboundMessage) -> SendResult:
        body = json.dumps(payload(message), ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": str(message.delivery_id),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature_header(
                self.settings.secret.get_secret_value(), timestamp, body
            ),
        }
        try:
            response = await self._http().post(self.settings.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TemporaryFailure(
                f"the app did not answer within {self.settings.timeout_s:g}s"
            ) from exc
        except httpx.HTTPError as exc:  # connection refused or reset, DNS, TLS...
            raise TemporaryFailure(f"the app is unreachable ({type(exc).__name__})") from exc
        status = response.status_code
        if 200 <= status < 300:
            provider_id = _provider_message_id(response, self.settings)
            log.debug("app accepted the notification", status=status)
            return SendResult(provider_message_id=provider_id, details={"http_status": status})
        raise self._failure(response)

    def _failure(self, response: httpx.Response) -> TemporaryFailure | PermanentFailure:
        status = response.status_code
        what = f"the app answered HTTP {status} {response.reason_phrase}".rstrip()
        if status in _RETRYABLE or status >= 500:
            return TemporaryFailure(
                what,
                code=str(status),
                retry_after_s=retry_after_seconds(response.headers.get("retry-after")),
            )
        if status in _OUR_CREDENTIALS:
            return PermanentFailure(
                f"{what}: check the shared secret with the app",
                code=str(status),
                operator_alert=True,
            )
        if status in _WRONG_URL or 300 <= status < 400:
            return PermanentFailure(
                f"{what}: check the webhook URL", code=str(status), operator_alert=True
            )
        return PermanentFailure(what, code=str(status))

    @classmethod
    def parse_receipt(cls, settings: WebhookSettings, request: ReceiptRequest) -> list[Receipt]:
        """Receipts the app POSTs to ``/v1/receipts/webhook``, signed like our requests."""
        return read_receipts(settings, request)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._client_loop is asyncio.get_running_loop():
            await client.aclose()
        # else: its loop is gone, and with it the connections

    async def health(self) -> Health:
        """Whether the app's host answers at all (any HTTP status), without sending."""
        try:
            response = await self._http().head(self.settings.url)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"unreachable: {type(exc).__name__}")
        return Health(ok=response.status_code < 500, detail=f"HTTP {response.status_code}")
