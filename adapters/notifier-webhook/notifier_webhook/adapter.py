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
408, 425, 429, 5xx          temporary: retried later (Retry-After honoured), code
                            ``http-<status>``
cannot connect              temporary, code ``connect-failed`` (nothing was sent)
timeout or connection lost  temporary and ``maybe_sent`` (the app may have it; it
after the request went out  dedupes the retry by ``Idempotency-Key``)
401, 403                    permanent + operator alert: our secret or the app's key is
                            wrong (the worker fails over to the next provider, if any)
404, 405, 3xx               permanent + operator alert: the URL is wrong
other 4xx (400, 410, 422)   permanent: the app cannot take this message (e.g. unknown
                            account); the core then tries the routing's fallback channel
==========================  ==========================================================

Transport errors, 429 and 5xx are mapped by the adapter kit's HTTP layer
(:mod:`notifier.adapter_http`), the same way for every adapter.
"""

from __future__ import annotations

import json
import time
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
from notifier.adapter_http import AdapterHttp, status_failure
from notifier.logging import get_logger

from .receipts import read_receipts
from .settings import WebhookSettings
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_header

__all__ = ["WebhookAdapter", "payload"]

log = get_logger(__name__)

USER_AGENT = "notifier-webhook/0.1"


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
        self._http = AdapterHttp(
            context,
            "the app",
            timeout_s=settings.timeout_s,
            max_connections=settings.max_connections,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    @property
    def max_in_flight(self) -> int:
        return self.settings.max_connections

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
        response = await self._http.request(
            "POST", self.settings.url, content=body, headers=headers
        )
        status = response.status_code
        if 200 <= status < 300:
            provider_id = _provider_message_id(response, self.settings)
            log.debug("app accepted the notification", status=status)
            return SendResult(provider_message_id=provider_id, details={"http_status": status})
        raise self._failure(response)

    def _failure(self, response: httpx.Response) -> TemporaryFailure | PermanentFailure:
        """A non-2xx answer the HTTP layer returned (429 and 5xx it raised itself), read
        by :func:`~notifier.adapter_http.status_failure`: 408/425 temporary; 401/403 our
        secret and 3xx/404/405 the URL (operator alerts); other 4xx (400, 410, 422) the
        app cannot take this message, e.g. an unknown account."""
        status = response.status_code
        what = f"the app answered HTTP {status} {response.reason_phrase}".rstrip()
        failure = status_failure(response, "the app", refusal_is_ours=False)
        if isinstance(failure, TemporaryFailure):
            return failure
        if failure.operator_alert:
            hint = (
                "check the shared secret with the app"
                if status in (401, 403)
                else "check the webhook URL"
            )
            return PermanentFailure(f"{what}: {hint}", code=failure.code, operator_alert=True)
        return PermanentFailure(what, code=failure.code)

    @classmethod
    def parse_receipt(cls, settings: WebhookSettings, request: ReceiptRequest) -> list[Receipt]:
        """Receipts the app POSTs to ``/v1/receipts/webhook``, signed like our requests."""
        return read_receipts(settings, request)

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> Health:
        """Whether the app's host answers at all (any HTTP status), without sending."""
        try:
            response = await self._http.client().head(self.settings.url)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"unreachable: {type(exc).__name__}")
        return Health(ok=response.status_code < 500, detail=f"HTTP {response.status_code}")
