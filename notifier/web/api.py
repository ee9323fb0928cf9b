"""The HTTP API (``notifier api``): event submission, the portal inbox, the delivery log.

Every route but ``/healthz`` needs an API key (``Authorization: Bearer <key>``) with
the route's scope; see :mod:`notifier.store.apikeys`. The OpenAPI document is at
``/openapi.json`` and browsable at ``/docs``.
"""

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from notifier import __version__
from notifier.adapter import InvalidReceipt, MalformedReceipt, ReceiptRequest
from notifier.app import Notifier
from notifier.events import EventRejected, parse_event
from notifier.logging import get_logger
from notifier.publisher import EventPublisher
from notifier.store.apikeys import ApiClient, ApiKeys
from notifier.store.deliveries.log import MAX_ID, DeliveryLog, DeliveryQuery
from notifier.store.inbox import InboxItem
from notifier.store.publishers import SUBMITTER_HEADER, Submitter, SubmitterKind

log = get_logger(__name__)


class Notification(BaseModel):
    id: int
    dossier_code: str
    agency_code: str
    status: str
    title: str
    body: str
    link: str | None
    created_at: datetime
    read: bool

    @classmethod
    def of(cls, item: InboxItem) -> "Notification":
        return cls(
            id=item.id,
            dossier_code=item.dossier_code,
            agency_code=item.agency_code,
            status=item.status,
            title=item.title,
            body=item.body,
            link=item.link,
            created_at=item.created_at,
            read=item.read_at is not None,
        )


class NotificationPage(BaseModel):
    items: list[Notification]
    next_before_id: int | None


class UnreadCount(BaseModel):
    unread: int


class ReceiptAnswer(BaseModel):
    received: int  # delivery reports in the call
    applied: int  # deliveries they moved forward
    duplicates: int = 0  # reports seen before: acknowledged, not applied again
    inbound: int = 0  # citizens' messages forwarded in the call
    opted_out: int = 0  # of which asked to stop (STOP, TU CHOI, HUY)


class Accepted(BaseModel):
    event_id: UUID
    status: str = "accepted"


class EventSubmitter:
    """Puts an accepted event on the same queue TTHC systems publish to."""

    def __init__(self, app: Notifier) -> None:
        self.app = app
        self._publisher: EventPublisher | None = None
        self._lock = threading.Lock()

    def __call__(self, body: bytes, submitter: Submitter) -> None:
        if not self.app.settings.uses_rabbitmq:
            self.app.submit(body, source="http", submitter=submitter)
            return
        # Published as notifier's own broker user (user_id), which alone the bridge
        # trusts to name the API key that posted the event.
        headers = {SUBMITTER_HEADER: json.dumps(submitter.as_json())}
        with self._lock:
            try:
                self._current().publish(body, headers=headers)
            except Exception:
                # One reconnect: the broker may have restarted since the last call.
                self._drop()
                self._current().publish(body, headers=headers)

    def _current(self) -> EventPublisher:
        if self._publisher is None:
            self._publisher = EventPublisher(self.app.settings.broker_url, self.app.settings.events)
        return self._publisher

    def _drop(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):  # the connection is already gone
                self._publisher.close()
            self._publisher = None


def create_api(
    app: Notifier, *, submit: Callable[[bytes, Submitter], None] | None = None
) -> FastAPI:
    api = FastAPI(
        title="notifier",
        version=__version__,
        description="Dossier status events in; citizen notifications out.",
    )
    keys = ApiKeys(app.database)
    delivery_log = DeliveryLog(app.database, app.settings.recipient_hash_key.get_secret_value())
    submit_event = submit or EventSubmitter(app)
    max_body = app.settings.api.max_body_bytes
    from notifier.store.optouts import opt_out_routes  # /v1/opt-outs, /v1/inbound-sms/{provider}
    from notifier.web.security import secure_api  # rate limit, body size limit, headers

    secure_api(api, app)
    api.include_router(opt_out_routes(app))

    def caller(scope: str) -> Callable[..., ApiClient]:
        def authenticate(authorization: Annotated[str | None, Header()] = None) -> ApiClient:
            if not authorization or not authorization.lower().startswith("bearer "):
                raise HTTPException(401, "missing API key", {"WWW-Authenticate": "Bearer"})
            client = keys.authenticate(authorization[7:].strip())
            if client is None:
                raise HTTPException(
                    401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"}
                )
            if scope not in client.scopes:
                raise HTTPException(403, f"this key lacks the {scope!r} scope")
            return client

        return authenticate

    @api.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @api.post(
        "/v1/events",
        status_code=202,
        response_model=Accepted,
        tags=["events"],
        responses={413: {"description": "too large"}, 422: {"description": "invalid"}},
    )
    async def submit_event_route(
        request: Request, client: Annotated[ApiClient, Depends(caller("publish"))]
    ) -> Accepted:
        body = await _bounded_body(request, max_body)
        submitter = Submitter(
            SubmitterKind.API_KEY, client.name, str(client.client_id), client.agencies
        )

        async def rejected(rejection: EventRejected, event_id: str | None = None) -> None:
            # Kept with the bytes received and the key that sent them: a replay is
            # authorised as this submission was.
            await asyncio.to_thread(
                app.ingest.reject,
                body,
                source="http",
                rejection=rejection,
                submitter=submitter,
                event_id=event_id,
            )

        try:
            event = parse_event(body, max_bytes=app.settings.events.max_bytes)
        except EventRejected as rejection:
            await rejected(rejection)
            raise HTTPException(
                422, {"reason": rejection.reason, "errors": rejection.errors}
            ) from None
        if not client.may_publish_for(event.agency.code):
            raise HTTPException(403, f"this key may not publish for agency {event.agency.code!r}")
        unknown = None if app.agencies is None else app.agencies.unknown(event.agency.code)
        if unknown is not None:
            await rejected(EventRejected(unknown), str(event.event_id))
            raise HTTPException(422, {"reason": unknown, "errors": [f"agency.code: {unknown}"]})
        await asyncio.to_thread(submit_event, body, submitter)
        return Accepted(event_id=event.event_id)

    @api.get(
        "/v1/inbox/{account_id}/notifications", response_model=NotificationPage, tags=["inbox"]
    )
    def list_notifications(
        account_id: str,
        _client: Annotated[ApiClient, Depends(caller("inbox"))],
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        unread_only: bool = False,
    ) -> NotificationPage:
        items = app.inbox.list(
            account_id[:64], limit=limit, before_id=before_id, unread_only=unread_only
        )
        next_before = items[-1].id if len(items) == limit else None
        return NotificationPage(
            items=[Notification.of(i) for i in items], next_before_id=next_before
        )

    @api.get("/v1/inbox/{account_id}/unread-count", response_model=UnreadCount, tags=["inbox"])
    def unread_count(
        account_id: str, _client: Annotated[ApiClient, Depends(caller("inbox"))]
    ) -> UnreadCount:
        return UnreadCount(unread=app.inbox.unread_count(account_id[:64]))

    @api.post("/v1/inbox/{account_id}/notifications/{notification_id}/read", tags=["inbox"])
    def mark_read(
        account_id: str,
        notification_id: Annotated[int, Path(ge=1, le=MAX_ID)],
        _client: Annotated[ApiClient, Depends(caller("inbox"))],
    ) -> dict[str, int]:
        changed = app.inbox.mark_read(account_id[:64], notification_id)
        if not changed and not any(
            i.id == notification_id
            for i in app.inbox.list(account_id[:64], limit=1, before_id=notification_id + 1)
        ):
            raise HTTPException(404, "no such notification for this account")
        return {"marked": changed}

    @api.post("/v1/inbox/{account_id}/read-all", tags=["inbox"])
    def mark_all_read(
        account_id: str, _client: Annotated[ApiClient, Depends(caller("inbox"))]
    ) -> dict[str, int]:
        return {"marked": app.inbox.mark_read(account_id[:64])}

    @api.get("/v1/inbox/{account_id}/stream", tags=["inbox"], response_class=StreamingResponse)
    async def stream(
        account_id: str,
        request: Request,
        _client: Annotated[ApiClient, Depends(caller("inbox"))],
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events: one ``notification`` event per new inbox item."""
        account = account_id[:64]
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
        if start is None:
            start = await asyncio.to_thread(app.inbox.latest_id, account)

        async def events() -> AsyncIterator[str]:
            seen, idle = start, 0.0
            yield "retry: 3000\n\n"
            while not await request.is_disconnected():
                items = await asyncio.to_thread(app.inbox.list, account, limit=50, after_id=seen)
                for item in reversed(items):
                    seen = max(seen, item.id)
                    data = Notification.of(item).model_dump_json()
                    yield f"id: {item.id}\nevent: notification\ndata: {data}\n\n"
                    idle = 0.0
                await asyncio.sleep(1.0)
                idle += 1.0
                if idle >= 15:
                    yield ": keep-alive\n\n"
                    idle = 0.0

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    receipt_adapters = {
        p.name: p for p in app.registry.all_providers() if p.adapter_class.accepts_receipts
    }
    # The channels each provider serves here: its receipts touch only their deliveries.
    served: dict[str, set[str]] = {}
    for channel_name, channel_providers in app.registry.channels.items():
        for p in channel_providers:
            served.setdefault(p.name, set()).add(channel_name)
    from notifier.store.optouts import OptOutStore, take_reply

    replies = OptOutStore(app.database, app.settings.recipient_hash_key.get_secret_value())

    async def take_receipt(provider: str, request: Request, token: str | None) -> ReceiptAnswer:
        """Delivery reports from providers, verified by each adapter's own scheme.

        A duplicate (a report seen before, e.g. a provider's retry after our answer was
        lost) is answered 200 and not applied again: providers retry anything else, and
        Zalo may turn off a webhook that keeps failing. Only what fails verification is
        refused (403); a verified but unreadable report is 400.
        """
        found = receipt_adapters.get(provider)
        if found is None:
            raise HTTPException(404, "no provider here takes receipts under that name")
        names = [name for name, _ in request.query_params.multi_items()]
        if len(names) != len(set(names)):
            # Which of two SMSIDs is the report's? Neither: refuse rather than guess.
            raise HTTPException(400, "a query parameter is given more than once")
        body = await _bounded_body(request, 64 * 1024)
        receipt_request = ReceiptRequest(
            method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query_params),
            body=body,
            received_at=time.time(),
            token=token,
        )
        adapter_class = found.adapter_class
        try:
            receipts = adapter_class.parse_receipt(found.settings, receipt_request)
            inbound = (
                adapter_class.parse_inbound(found.settings, receipt_request)
                if adapter_class.accepts_inbound
                else []
            )
        except MalformedReceipt as exc:
            log.warning("receipt refused: malformed", provider=provider, reason=str(exc))
            raise HTTPException(400, "receipt malformed") from None
        except InvalidReceipt as exc:
            log.warning("receipt refused", provider=provider, reason=str(exc))
            raise HTTPException(403, "receipt refused") from None
        if token is None and receipts:
            log.warning(
                "receipt by the deprecated ?token= URL: give the provider "
                f"/v1/receipts/{provider}/<token> instead",
                provider=provider,
            )
        fresh = [r for r in receipts if r.nonce is None]
        nonces = [r for r in receipts if r.nonce is not None]
        if nonces:
            taken = await asyncio.to_thread(
                app.deliveries.take_nonces, provider, [r.nonce or "" for r in nonces]
            )
            fresh += [r for r, new in zip(nonces, taken, strict=True) if new]
        duplicates = len(receipts) - len(fresh)
        if duplicates:
            log.info("receipt duplicate acknowledged", provider=provider, count=duplicates)
        applied = 0
        for item in fresh:
            changed = await asyncio.to_thread(
                app.deliveries.apply_receipt,
                provider,
                channels=served.get(provider, set()),
                delivered=item.delivered,
                delivery_id=item.delivery_id,
                provider_message_id=item.provider_message_id,
                error=item.error,
                error_code=item.error_code,
            )
            applied += int(changed)
        opted_out = 0
        for message in inbound:
            opted_out += int(
                await asyncio.to_thread(take_reply, replies, provider, message.phone, message.text)
            )
        return ReceiptAnswer(
            received=len(receipts),
            applied=applied,
            duplicates=duplicates,
            inbound=len(inbound),
            opted_out=opted_out,
        )

    async def receipt(provider: str, request: Request) -> ReceiptAnswer:
        """A provider's delivery report; gateways that cannot sign prove themselves with
        ``?token=`` (deprecated: use ``/v1/receipts/{provider}/{token}``)."""
        return await take_receipt(provider, request, None)

    async def receipt_with_token(
        provider: str, token: Annotated[str, Path(max_length=200)], request: Request
    ) -> ReceiptAnswer:
        """A provider's delivery report, the shared secret in the path: eSMS appends its
        own query string to the callback URL, which a ``?token=`` might not survive."""
        return await take_receipt(provider, request, token)

    # Providers call back with GET (eSMS) or POST (Zalo, SpeedSMS, webhooks): one handler,
    # two operations in the OpenAPI document, for each URL form.
    for method in ("GET", "POST"):
        api.add_api_route(
            "/v1/receipts/{provider}",
            receipt,
            methods=[method],
            response_model=ReceiptAnswer,
            tags=["receipts"],
            operation_id=f"receipt_{method.lower()}",
        )
        api.add_api_route(
            "/v1/receipts/{provider}/{token}",
            receipt_with_token,
            methods=[method],
            response_model=ReceiptAnswer,
            tags=["receipts"],
            operation_id=f"receipt_with_token_{method.lower()}",
        )

    @api.get("/v1/deliveries", tags=["operators"])
    def list_deliveries(
        _client: Annotated[ApiClient, Depends(caller("operator"))],
        dossier_code: str | None = None,
        channel: str | None = None,
        status: str | None = None,
        agency_code: str | None = None,
        event_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> dict[str, Any]:
        rows = delivery_log.search(
            DeliveryQuery(
                dossier_code=dossier_code,
                channel=channel,
                status=status,
                agency_code=agency_code,
                event_id=event_id,
                since=since,
                until=until,
                limit=limit,
                offset=offset,
            )
        )
        return {"items": [row.as_json() for row in rows]}

    @api.get("/v1/deliveries/{delivery_id}/attempts", tags=["operators"])
    def delivery_attempts(
        delivery_id: UUID, _client: Annotated[ApiClient, Depends(caller("operator"))]
    ) -> dict[str, Any]:
        rows = delivery_log.attempts(delivery_id)
        return {"items": [json.loads(json.dumps(r.__dict__, default=str)) for r in rows]}

    @api.get("/v1/rejects", tags=["operators"])
    def list_rejects(
        _client: Annotated[ApiClient, Depends(caller("operator"))],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> dict[str, Any]:
        rows = delivery_log.rejects(limit=limit, offset=offset)
        return {"items": [json.loads(json.dumps(r.__dict__, default=str)) for r in rows]}

    from notifier.web.console import install_console  # /console, its /v1 API, /metrics

    install_console(api, app)
    return api


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
