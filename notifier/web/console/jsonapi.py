"""The console's JSON API under /v1 (for scripts and the national monitoring feed) and
the Prometheus /metrics endpoint.

Reads need an API key with scope ``operator`` (or ``admin``), or a console session;
replays need ``admin`` (or an admin operator's session plus its CSRF token).
"""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from notifier.ops.replay import ReplayResult, Resolution, summarise
from notifier.ops.reports import ReportError, build_report, report_range, zone
from notifier.store.deliveries.log import MAX_ID, MAX_PAGE, DeliveryQuery
from notifier.web.console import views
from notifier.web.console.auth import Principal
from notifier.web.console.service import Console


class SearchRequest(BaseModel):
    """Delivery search; ``recipient`` is a full phone or email (matched by its keyed
    hash, never stored or echoed), ``recipient_masked`` as the log displays it."""

    dossier_code: str | None = Field(default=None, max_length=64)
    recipient: str | None = Field(default=None, max_length=320)
    recipient_masked: str | None = Field(default=None, max_length=128)
    channel: str | None = None
    status: str | None = None
    agency_code: str | None = None
    procedure_code: str | None = None
    provider: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    page: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=50, ge=1, le=MAX_PAGE)


class DeadLetterFilter(BaseModel):
    kind: Literal["exhausted", "permanent", "temporary"] = "exhausted"
    channel: str | None = None
    agency_code: str | None = None
    dossier_code: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class DeliveryReplayRequest(BaseModel):
    """Replay by ids, or every dead letter matching ``filter`` (``all`` must be true
    when the filter is empty, so an empty body never replays everything)."""

    ids: list[UUID] = Field(default_factory=list, max_length=1000)
    filter: DeadLetterFilter | None = None
    all: bool = False
    include_told_by_fallback: bool = False
    dry_run: bool = False


class ResolveRequest(BaseModel):
    resolution: Resolution


class RejectReplayRequest(BaseModel):
    ids: list[UUID] = Field(default_factory=list, max_length=1000)
    all: bool = False
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, "times need a zone offset, e.g. 2026-11-26T08:00:00+07:00")
    return value


def _replayed(results: list[ReplayResult]) -> dict[str, Any]:
    return {"summary": summarise(results), "items": [r.as_json() for r in results]}


def api_router(console: Console) -> APIRouter:
    router = APIRouter(tags=["operators"])
    reader = Depends(console.api_user())
    admin = Depends(console.api_user(admin=True))
    Reader = Annotated[Principal, reader]
    Admin = Annotated[Principal, admin]

    @router.get("/v1/overview")
    def overview(_user: Reader, window: Literal["hour", "day", "month"] = "day") -> dict[str, Any]:
        """Deliveries per channel and status over a window, in buckets, with the failure
        rate and delivery time percentiles (what the console's overview draws)."""
        return views.overview(console.log, window).as_json()

    @router.post("/v1/deliveries/search")
    def search(_user: Reader, body: SearchRequest) -> dict[str, Any]:
        """Delivery search, paged; recipients are shown masked only."""
        query = DeliveryQuery(
            dossier_code=body.dossier_code,
            recipient=body.recipient,
            recipient_masked=body.recipient_masked,
            channel=body.channel,
            status=body.status,
            agency_code=body.agency_code,
            procedure_code=body.procedure_code,
            provider=body.provider,
            since=_aware(body.since),
            until=_aware(body.until),
            limit=body.page_size,
            offset=(body.page - 1) * body.page_size,
        )
        total = console.log.count(query)
        return {
            "items": [row.as_json() for row in console.log.search(query)],
            "total": total,
            "page": body.page,
            "page_size": body.page_size,
        }

    @router.get("/v1/dossiers/{code}")
    def dossier(_user: Reader, code: str) -> dict[str, Any]:
        """Every event of a dossier and every delivery with its attempt timeline
        (attempts, provider ids, errors, receipts, replays)."""
        timeline = console.log.dossier(code[:64])
        if not timeline.events and not timeline.deliveries:
            raise HTTPException(404, "no events or deliveries for this dossier code")
        return views.dossier_json(timeline)

    @router.get("/v1/dead-letters")
    def dead_letters(
        _user: Reader,
        kind: Literal["exhausted", "permanent", "temporary"] = "exhausted",
        channel: str | None = None,
        agency_code: str | None = None,
        dossier_code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> dict[str, Any]:
        """Failed deliveries, with any fallback planned for each."""
        query = views.dead_letter_query(
            kind,
            channel=channel,
            agency_code=agency_code,
            dossier_code=dossier_code,
            since=_aware(since),
            until=_aware(until),
            limit=limit,
            offset=offset,
        )
        items, total = views.dead_letters(console.log, query)
        return {"items": [i.as_json() for i in items], "total": total}

    @router.post("/v1/deliveries/{delivery_id}/replay")
    def replay_delivery(user: Admin, delivery_id: UUID) -> dict[str, Any]:
        """Send one failed delivery again (a second call does nothing)."""
        return console.replayer.delivery(delivery_id, actor=user.actor).as_json()

    @router.post("/v1/deliveries/{delivery_id}/resolve")
    def resolve_delivery(user: Admin, delivery_id: UUID, body: ResolveRequest) -> dict[str, Any]:
        """Decide on a delivery held as ``unknown``: resend it, or mark it sent (a
        second call does nothing)."""
        return console.replayer.resolve(delivery_id, body.resolution, actor=user.actor).as_json()

    @router.post("/v1/dead-letters/replay")
    def replay_dead_letters(user: Admin, body: DeliveryReplayRequest) -> dict[str, Any]:
        if body.ids:
            return _replayed([console.replayer.delivery(i, actor=user.actor) for i in body.ids])
        chosen = body.filter or DeadLetterFilter()
        if not body.all and chosen.model_dump(exclude={"kind"}, exclude_none=True) == {}:
            raise HTTPException(422, "give ids, a filter, or all: true")
        query = views.dead_letter_query(
            chosen.kind,
            channel=chosen.channel,
            agency_code=chosen.agency_code,
            dossier_code=chosen.dossier_code,
            since=_aware(chosen.since),
            until=_aware(chosen.until),
        )
        return _replayed(
            console.replayer.deliveries(
                query,
                actor=user.actor,
                include_told_by_fallback=body.include_told_by_fallback,
                dry_run=body.dry_run,
            )
        )

    @router.post("/v1/rejects/replay")
    def replay_rejects(user: Admin, body: RejectReplayRequest) -> dict[str, Any]:
        """Re-submit rejected events' payloads through ingest (deduped by event id)."""
        if body.ids:
            return _replayed([console.replayer.reject(i, actor=user.actor) for i in body.ids])
        if not body.all and body.since is None and body.until is None:
            raise HTTPException(422, "give ids, a since/until range, or all: true")
        return _replayed(
            console.replayer.rejects(
                actor=user.actor,
                since=_aware(body.since),
                until=_aware(body.until),
                dry_run=body.dry_run,
            )
        )

    @router.get("/v1/providers")
    def providers(_user: Reader) -> dict[str, Any]:
        """Provider health: circuit state, rate-limit/quota details, recent error rates."""
        items = views.providers(console.log, console.configured_providers)
        return {"items": [i.as_json() for i in items]}

    @router.get("/v1/reports", response_model=None)
    def report(
        _user: Reader,
        start: Annotated[str | None, Query(alias="from")] = None,
        end: Annotated[str | None, Query(alias="to")] = None,
        day: str | None = None,
        tz: str | None = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response | dict[str, Any]:
        """Counts per agency, procedure, channel and status, and delivery time
        percentiles per channel, for [from, to) or one day (dates in ``tz``, default
        Asia/Ho_Chi_Minh)."""
        try:
            since, until = report_range(start, end, day, zone(tz))
        except ReportError as exc:
            raise HTTPException(422, str(exc)) from None
        built = build_report(console.log, since, until, timezone_name=tz)
        if format == "csv":
            return Response(built.as_csv(), media_type="text/csv; charset=utf-8")
        return JSONResponse(built.as_json())

    @router.get("/metrics", tags=["service"], response_class=Response)
    def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        """Prometheus text exposition; needs an API key with scope metrics, operator or
        admin (Prometheus: ``authorization: {credentials_file: ...}``)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "missing API key", {"WWW-Authenticate": "Bearer"})
        client = console.keys.authenticate(authorization[7:].strip())
        if client is None:
            raise HTTPException(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
        if not {"metrics", "operator", "admin"} & set(client.scopes):
            raise HTTPException(403, "this key lacks the 'metrics' scope")
        from notifier.ops.metrics import exposition

        body, content_type = exposition(console.metrics_registry)
        return Response(body, media_type=content_type)

    return router
