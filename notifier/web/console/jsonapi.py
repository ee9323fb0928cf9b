"""The console's JSON API under /v1 (for scripts and the national monitoring feed).

Reads need an API key with scope ``operator`` (or ``admin``), or a console session;
replays need ``admin`` (or an admin operator's session plus its CSRF token).
"""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from notifier.ops.replay import ReplayResult, Resolution, summarise
from notifier.ops.reports import ReportError, build_report, report_range, zone
from notifier.store.deliveries.log import MAX_ID, MAX_PAGE
from notifier.web.console import views
from notifier.web.console.auth import Principal
from notifier.web.console.service import Console, api_admin, api_reader, get_console
from notifier.web.deps import aware


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


router = APIRouter(tags=["operators"])
Reader = Annotated[Principal, Depends(api_reader)]
Admin = Annotated[Principal, Depends(api_admin)]
TheConsole = Annotated[Console, Depends(get_console)]


def _replayed(results: list[ReplayResult]) -> dict[str, Any]:
    return {"summary": summarise(results), "items": [r.as_json() for r in results]}


@router.get("/v1/overview")
def overview(
    console: TheConsole, _user: Reader, window: Literal["hour", "day", "month"] = "day"
) -> dict[str, Any]:
    """Deliveries per channel and status over a window, in buckets, with the failure
    rate and delivery time percentiles (what the console's overview draws)."""
    return views.overview(console.log, window).as_json()


@router.get("/v1/dossiers/{code}")
def dossier(console: TheConsole, _user: Reader, code: str) -> dict[str, Any]:
    """Every event of a dossier and every delivery with its attempt timeline
    (attempts, provider ids, errors, receipts, replays)."""
    timeline = console.log.dossier(code[:64])
    if not timeline.events and not timeline.deliveries:
        raise HTTPException(404, "no events or deliveries for this dossier code")
    return views.dossier_json(timeline)


@router.get("/v1/dead-letters")
def dead_letters(
    console: TheConsole,
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
        since=aware(since),
        until=aware(until),
        limit=limit,
        offset=offset,
    )
    items, total = views.dead_letters(console.log, query)
    return {"items": [i.as_json() for i in items], "total": total}


@router.post("/v1/deliveries/{delivery_id}/replay")
def replay_delivery(console: TheConsole, user: Admin, delivery_id: UUID) -> dict[str, Any]:
    """Send one failed delivery again (a second call does nothing)."""
    return console.replayer.delivery(delivery_id, actor=user.actor).as_json()


@router.post("/v1/deliveries/{delivery_id}/resolve")
def resolve_delivery(
    console: TheConsole, user: Admin, delivery_id: UUID, body: ResolveRequest
) -> dict[str, Any]:
    """Decide on a delivery held as ``unknown``: resend it, or mark it sent (a
    second call does nothing)."""
    return console.replayer.resolve(delivery_id, body.resolution, actor=user.actor).as_json()


@router.post("/v1/dead-letters/replay")
def replay_dead_letters(
    console: TheConsole, user: Admin, body: DeliveryReplayRequest
) -> dict[str, Any]:
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
        since=aware(chosen.since),
        until=aware(chosen.until),
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
def replay_rejects(console: TheConsole, user: Admin, body: RejectReplayRequest) -> dict[str, Any]:
    """Re-submit rejected events' payloads through ingest (deduped by event id)."""
    if body.ids:
        return _replayed([console.replayer.reject(i, actor=user.actor) for i in body.ids])
    if not body.all and body.since is None and body.until is None:
        raise HTTPException(422, "give ids, a since/until range, or all: true")
    return _replayed(
        console.replayer.rejects(
            actor=user.actor,
            since=aware(body.since),
            until=aware(body.until),
            dry_run=body.dry_run,
        )
    )


@router.get("/v1/providers")
def providers(console: TheConsole, _user: Reader) -> dict[str, Any]:
    """Provider health: circuit state, rate-limit/quota details, recent error rates."""
    items = views.providers(console.log, console.configured_providers)
    return {"items": [i.as_json() for i in items]}


@router.get("/v1/reports", response_model=None)
def report(
    console: TheConsole,
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
