"""The console's HTML pages under /console (server-rendered, Vietnamese by default)."""

import json
import math
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from notifier.masking import recipient_hash
from notifier.ops.replay import ReplayOutcome, ReplayResult, Resolution, summarise
from notifier.ops.reports import (
    ReportError,
    build_report,
    default_report_days,
    parse_moment,
    report_range,
)
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.deliveries.log import DeliveryQuery
from notifier.web.console import charts, views
from notifier.web.console.auth import NotSignedIn, Principal
from notifier.web.console.i18n import LOCAL_ZONE, STATUS_ORDER
from notifier.web.console.service import Console, get_console, page_user, static_file

PAGE_SIZE = 50
SEARCH_FIELDS = ("dossier_code", "channel", "status", "agency_code", "from", "to")


router = APIRouter(prefix="/console", include_in_schema=False)
User = Annotated[Principal, Depends(page_user)]
TheConsole = Annotated[Console, Depends(get_console)]


def _first(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _local_moment(text: str | None, errors: list[str]) -> datetime | None:
    """A date or datetime-local input value, in Vietnam time."""
    if not text:
        return None
    try:
        return parse_moment(text, LOCAL_ZONE)[0]
    except ReportError as exc:
        errors.append(str(exc))
        return None


def _safe_next(target: str | None, default: str) -> str:
    """Only our own console paths: never an open redirect."""
    if target and target.startswith("/console/") and not target.startswith("//"):
        return target
    return default


def _page_count(total: int) -> int:
    return max(1, math.ceil(total / PAGE_SIZE))


def _page(value: str | None) -> int:
    return int(value) if value and value.isdigit() and 0 < int(value) < 100_000 else 1


@router.get("/static/{name}")
def static(name: str) -> Response:
    found = static_file(name)
    if found is None:
        raise HTTPException(404)
    body, media_type = found
    return Response(
        body,
        media_type=media_type,
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("")
@router.get("/")
def home(console: TheConsole, request: Request) -> Response:
    return console.redirect(request, "/console/overview")


# -- signing in and out ---------------------------------------------------------------


@router.get("/sign-in")
def sign_in_form(console: TheConsole, request: Request, next: str | None = None) -> Response:
    if console.sessions.principal(request) is not None:
        return console.redirect(request, _safe_next(next, "/console/overview"))
    return _sign_in_page(console, request, next, None)


def _sign_in_page(
    console: Console,
    request: Request,
    next_url: str | None,
    message_key: str | None,
    status: int = 200,
) -> Response:
    token, new_nonce = console.sessions.presession(request)
    response = console.render(
        request,
        "sign_in.html",
        None,
        status_code=status,
        next_url=_safe_next(next_url, "/console/overview"),
        message_key=message_key,
        signin_csrf=token,
    )
    if new_nonce is not None:
        console.sessions.set_presession(response, request, new_nonce)
    return response


@router.post("/sign-in")
async def sign_in(console: TheConsole, request: Request) -> Response:
    form = await console.form(request)
    next_url = _safe_next(_first(form, "next"), "/console/overview")
    if not console.sessions.presession_valid(request, _first(form, "csrf_token")):
        return _sign_in_page(console, request, next_url, "session_expired", 403)
    username = _first(form, "username").lower()[:64]
    password = (form.get("password") or [""])[0]
    # The client a trusted proxy named, if any (see NOTIFIER_API__TRUSTED_PROXIES).
    address = request.client.host if request.client else "?"
    wait = console.throttle.retry_after(username, address)
    if wait > 0:
        answer = _sign_in_page(console, request, next_url, "too_many_attempts", 429)
        answer.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return answer
    operator = await run_in_threadpool(console.operators.authenticate, username, password)
    if operator is None:
        console.throttle.failed(username, address)
        return _sign_in_page(console, request, next_url, "bad_credentials", 401)
    console.throttle.succeeded(username, address)
    response = console.redirect(request, next_url)
    await run_in_threadpool(console.sessions.start, response, request, operator)
    return response


@router.post("/sign-out")
async def sign_out(console: TheConsole, request: Request) -> Response:
    form = await console.form(request)
    user = await run_in_threadpool(console.sessions.principal, request)
    if user is not None:
        console.check_post(request, user, form)
    response = console.redirect(request, "/console/sign-in")
    await run_in_threadpool(console.sessions.end, response, request)
    return response


# -- overview -------------------------------------------------------------------------


@router.get("/overview")
def overview_page(
    console: TheConsole, request: Request, user: User, window: str = "day"
) -> Response:
    if window not in views.WINDOWS:
        window = "day"
    data = views.overview(console.log, window)
    tr = console.translator(request)
    status_chart = charts.stacked_bars(
        data.labels,
        data.series_by_status,
        order=STATUS_ORDER,
        name_of=tr.status,
        title=tr("over_time"),
        empty_text=tr("no_results"),
    )
    sparks = {
        channel: charts.spark_bars(
            series, data.failures_by_channel[channel], title=tr.channel(channel)
        )
        for channel, series in data.series_by_channel.items()
    }
    return console.render(
        request,
        "overview.html",
        user,
        nav="overview",
        data=data,
        budgets=console.budgets(),
        windows=views.WINDOWS,
        status_chart=status_chart,
        sparks=sparks,
        statuses=STATUS_ORDER,
        shown_statuses=[s for s in STATUS_ORDER if data.by_status.get(s)],
        meter=charts.meter,
    )


# -- delivery search ------------------------------------------------------------------


@router.get("/deliveries")
def search_page(console: TheConsole, request: Request, user: User) -> Response:
    params = request.query_params
    errors: list[str] = []
    page = _page(params.get("page"))
    query = DeliveryQuery(
        dossier_code=params.get("dossier_code") or None,
        channel=params.get("channel") or None,
        status=params.get("status") or None,
        agency_code=params.get("agency_code") or None,
        recipient_masked=params.get("recipient_masked") or None,
        recipient_hash=params.get("rh") or None,
        since=_local_moment(params.get("from"), errors),
        until=_local_moment(params.get("to"), errors),
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    searched = any(params.get(k) for k in (*SEARCH_FIELDS, "rh", "recipient_masked"))
    rows = console.log.search(query)
    total = console.log.count(query)
    kept = {k: v for k, v in params.items() if k not in ("page", "lang") and v}
    return console.render(
        request,
        "deliveries.html",
        user,
        nav="search",
        rows=rows,
        total=total,
        page=page,
        pages=_page_count(total),
        params=params,
        searched=searched,
        errors=errors,
        page_url=lambda n: "/console/deliveries?" + urlencode({**kept, "page": n}),
        channels=sorted(console.app.registry.channels),
        statuses=STATUS_ORDER,
    )


@router.post("/deliveries")
async def search_submit(console: TheConsole, request: Request) -> Response:
    """The search form posts (so a full phone or email never lands in a URL, a log
    or the history) and is redirected to the results, with the contact's hash."""
    form = await console.form(request)
    user = await run_in_threadpool(console.sessions.principal, request)
    if user is None:
        raise NotSignedIn()
    console.check_post(request, user, form)
    query = {k: _first(form, k) for k in SEARCH_FIELDS if _first(form, k)}
    recipient = _first(form, "recipient")
    if "*" in recipient:
        query["recipient_masked"] = recipient
    elif recipient:
        query["rh"] = recipient_hash(recipient, console.log.hash_key)
    elif _first(form, "rh"):
        query["rh"] = _first(form, "rh")
    return console.redirect(request, "/console/deliveries?" + urlencode(query))


@router.get("/deliveries/{delivery_id}")
def delivery_page(console: TheConsole, request: Request, user: User, delivery_id: UUID) -> Response:
    """A delivery's timeline is on its dossier's page, next to its siblings."""
    code = console.log.dossier_code_of(delivery_id)
    if code is None:
        return console.error_page(request, 404, "not_found")
    return console.redirect(request, f"/console/dossiers/{_quote(code)}#d-{delivery_id}")


# -- a dossier ------------------------------------------------------------------------


@router.get("/dossiers/{code}")
def dossier_page(console: TheConsole, request: Request, user: User, code: str) -> Response:
    timeline = console.log.dossier(code[:64])
    by_id = {d.delivery.delivery_id: d.delivery for d in timeline.deliveries}
    return console.render(
        request,
        "dossier.html",
        user,
        nav="search",
        timeline=timeline,
        by_id=by_id,
        replayable=(DeliveryStatus.PERMANENT_FAILURE, DeliveryStatus.TEMPORARY_FAILURE),
        held_status=DeliveryStatus.UNKNOWN,
        done=request.query_params.get("done"),
    )


@router.post("/deliveries/{delivery_id}/replay")
async def replay_delivery(console: TheConsole, request: Request, delivery_id: UUID) -> Response:
    form = await console.form(request)
    user = await _admin(console, request, form)
    result = await run_in_threadpool(console.replayer.delivery, delivery_id, actor=user.actor)
    target = _safe_next(_first(form, "next"), "/console/dead-letters")
    base, _, anchor = target.partition("#")
    joiner = "&" if "?" in base else "?"
    return console.redirect(
        request,
        f"{base}{joiner}done={result.outcome.value}" + (f"#{anchor}" if anchor else ""),
    )


@router.post("/deliveries/{delivery_id}/resolve")
async def resolve_delivery(console: TheConsole, request: Request, delivery_id: UUID) -> Response:
    """An admin's decision on a delivery held as unknown: resend, or mark sent."""
    form = await console.form(request)
    user = await _admin(console, request, form)
    try:
        resolution = Resolution(_first(form, "resolution") or "")
    except ValueError:
        raise HTTPException(400, "resolution must be resend or mark-sent") from None
    result = await run_in_threadpool(
        console.replayer.resolve, delivery_id, resolution, actor=user.actor
    )
    target = _safe_next(
        _first(form, "next"), f"/console/deliveries?status={DeliveryStatus.UNKNOWN}"
    )
    base, _, anchor = target.partition("#")
    joiner = "&" if "?" in base else "?"
    return console.redirect(
        request,
        f"{base}{joiner}done={result.outcome.value}" + (f"#{anchor}" if anchor else ""),
    )


async def _admin(console: Console, request: Request, form: dict[str, list[str]]) -> Principal:
    user = await run_in_threadpool(console.sessions.principal, request)
    if user is None:
        raise NotSignedIn()
    console.check_post(request, user, form)
    if not user.is_admin:
        raise HTTPException(403, "only admins may replay")
    return user


# -- dead letters and rejects ---------------------------------------------------------


@router.get("/dead-letters")
def dead_letters_page(console: TheConsole, request: Request, user: User) -> Response:
    params = request.query_params
    errors: list[str] = []
    kind = params.get("kind") or "exhausted"
    if kind not in views.DEAD_LETTER_KINDS:
        kind = "exhausted"
    page = _page(params.get("page"))
    query = views.dead_letter_query(
        kind,
        channel=params.get("channel"),
        agency_code=params.get("agency_code"),
        dossier_code=params.get("dossier_code"),
        since=_local_moment(params.get("from"), errors),
        until=_local_moment(params.get("to"), errors),
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    items, total = views.dead_letters(console.log, query)
    kept = {k: v for k, v in params.items() if k not in ("page", "lang", "done") and v}
    return console.render(
        request,
        "dead_letters.html",
        user,
        nav="dead_letters",
        items=items,
        total=total,
        page=page,
        pages=_page_count(total),
        kind=kind,
        kinds=views.DEAD_LETTER_KINDS,
        params=params,
        errors=errors,
        done=_done(params),
        filter_fields=kept,
        page_url=lambda n: "/console/dead-letters?" + urlencode({**kept, "page": n}),
        channels=sorted(console.app.registry.channels),
    )


@router.post("/dead-letters/replay")
async def replay_dead_letters(console: TheConsole, request: Request) -> Response:
    form = await console.form(request)
    user = await _admin(console, request, form)
    errors: list[str] = []
    if _first(form, "scope") == "all":
        kind = _first(form, "kind") or "exhausted"
        query = views.dead_letter_query(
            kind if kind in views.DEAD_LETTER_KINDS else "exhausted",
            channel=_first(form, "channel"),
            agency_code=_first(form, "agency_code"),
            dossier_code=_first(form, "dossier_code"),
            since=_local_moment(_first(form, "from"), errors),
            until=_local_moment(_first(form, "to"), errors),
        )
        results = await run_in_threadpool(console.replayer.deliveries, query, actor=user.actor)
    else:
        ids = _uuids(form.get("ids", []))
        results = await run_in_threadpool(
            lambda: [console.replayer.delivery(i, actor=user.actor) for i in ids]
        )
    keep = {k: _first(form, k) for k in ("kind", "channel", "agency_code") if _first(form, k)}
    return console.redirect(
        request, "/console/dead-letters?" + urlencode({**keep, **_counts(results)})
    )


@router.get("/rejects")
def rejects_page(console: TheConsole, request: Request, user: User) -> Response:
    page = _page(request.query_params.get("page"))
    rows = console.log.rejects(limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    total = console.log.rejects_count()
    return console.render(
        request,
        "rejects.html",
        user,
        nav="rejects",
        rows=rows,
        total=total,
        page=page,
        pages=_page_count(total),
        done=_done(request.query_params),
        page_url=lambda n: f"/console/rejects?page={n}",
    )


@router.post("/rejects/replay")
async def replay_rejects(console: TheConsole, request: Request) -> Response:
    form = await console.form(request)
    user = await _admin(console, request, form)
    if _first(form, "scope") == "all":
        results = await run_in_threadpool(console.replayer.rejects, actor=user.actor)
    else:
        ids = _uuids(form.get("ids", []))
        results = await run_in_threadpool(
            lambda: [console.replayer.reject(i, actor=user.actor) for i in ids]
        )
    return console.redirect(request, "/console/rejects?" + urlencode(_counts(results)))


# -- publishers' callbacks ------------------------------------------------------------


def _callbacks_page(
    console: Console,
    request: Request,
    user: Principal,
    *,
    errors: list[str] | None = None,
    secret: str | None = None,
    secret_for: str | None = None,
    replayed: int | None = None,
    status_code: int = 200,
) -> Response:
    store = console.app.callbacks
    response = console.render(
        request,
        "callbacks.html",
        user,
        status_code=status_code,
        nav="callbacks",
        items=store.health(),
        dead=store.dead_letters(limit=PAGE_SIZE),
        dead_total=store.dead_count(),
        errors=errors or [],
        secret=secret,
        secret_for=secret_for,
        replayed=replayed,
    )
    if secret is not None:
        response.headers["Cache-Control"] = "no-store"  # a secret shown once, not kept
    return response


@router.get("/callbacks")
def callbacks_page(console: TheConsole, request: Request, user: User) -> Response:
    done = request.query_params.get("replayed")
    replayed = int(done) if done and done.isdigit() else None
    return _callbacks_page(console, request, user, replayed=replayed)


@router.post("/callbacks/set")
async def set_callback(console: TheConsole, request: Request) -> Response:
    from notifier.callback_http import DestinationPolicy, DestinationRefused
    from notifier.store.callbacks import CallbackError
    from notifier.webhooks import new_secret

    form = await console.form(request)
    user = await _admin(console, request, form)
    publisher, kind, url = _first(form, "publisher"), _first(form, "kind"), _first(form, "url")
    rules = console.app.settings.callbacks
    secret = new_secret()
    try:
        DestinationPolicy.of(rules.allowed_networks, allow_http=rules.allow_http).check_url(url)
        target, created = await run_in_threadpool(
            console.app.callbacks.set_target, kind, publisher, url, secret
        )
    except DestinationRefused as exc:
        return _callbacks_page(console, request, user, errors=[exc.reason], status_code=400)
    except (CallbackError, ValueError) as exc:
        return _callbacks_page(console, request, user, errors=[str(exc)], status_code=400)
    if not created:
        return console.redirect(request, "/console/callbacks")
    return _callbacks_page(console, request, user, secret=secret, secret_for=target.publisher_name)


@router.post("/callbacks/rotate")
async def rotate_callback_secret(console: TheConsole, request: Request) -> Response:
    from notifier.store.callbacks import CallbackError
    from notifier.webhooks import new_secret

    form = await console.form(request)
    user = await _admin(console, request, form)
    publisher, kind = _first(form, "publisher"), _first(form, "kind")
    store = console.app.callbacks
    try:
        if _first(form, "action") == "end":
            await run_in_threadpool(store.end_rotation, kind, publisher)
            return console.redirect(request, "/console/callbacks")
        secret = new_secret()
        await run_in_threadpool(store.rotate_secret, kind, publisher, secret)
    except (CallbackError, ValueError) as exc:
        return _callbacks_page(console, request, user, errors=[str(exc)], status_code=400)
    return _callbacks_page(console, request, user, secret=secret, secret_for=publisher)


@router.post("/callbacks/replay")
async def replay_callbacks(console: TheConsole, request: Request) -> Response:
    form = await console.form(request)
    await _admin(console, request, form)
    store = console.app.callbacks
    if _first(form, "scope") == "all":
        count = await run_in_threadpool(store.replay, None)
    else:
        count = await run_in_threadpool(store.replay, _uuids(form.get("ids", [])))
    return console.redirect(request, f"/console/callbacks?replayed={count}")


# -- providers and reports ------------------------------------------------------------


@router.get("/providers")
def providers_page(console: TheConsole, request: Request, user: User) -> Response:
    items = views.providers(console.log, console.configured_providers)
    return console.render(
        request,
        "providers.html",
        user,
        nav="providers",
        items=items,
        meter=charts.meter,
    )


@router.get("/reports")
def reports_page(console: TheConsole, request: Request, user: User) -> Response:
    params = request.query_params
    start = params.get("from") or ""
    end = params.get("to") or ""
    if not start and not end:  # opens on the last 30 days, today included
        start, end = default_report_days(datetime.now(LOCAL_ZONE).date())
    report, error = None, None
    if start:
        try:
            since, until = report_range(start, end or None, None, LOCAL_ZONE)
            report = build_report(console.log, since, until)
        except ReportError as exc:
            error = str(exc)
    query = urlencode({"from": start, "to": end}) if start else ""
    return console.render(
        request,
        "reports.html",
        user,
        nav="reports",
        report=report,
        budgets=console.budgets(),
        error=error,
        start=start,
        end=end,
        download_query=query,
    )


@router.get("/reports/download")
def report_download(
    console: TheConsole, request: Request, user: User, format: str = "csv"
) -> Response:
    params = request.query_params
    try:
        since, until = report_range(
            params.get("from") or None, params.get("to") or None, None, LOCAL_ZONE
        )
    except ReportError as exc:
        raise HTTPException(400, str(exc)) from None
    report = build_report(console.log, since, until)
    stamp = f"{since.astimezone(LOCAL_ZONE):%Y%m%d}-{until.astimezone(LOCAL_ZONE):%Y%m%d}"
    if format == "json":
        body = json.dumps(report.as_json(), ensure_ascii=False, indent=2).encode()
        media, suffix = "application/json", "json"
    else:
        body, media, suffix = report.as_csv().encode(), "text/csv; charset=utf-8", "csv"
    response = Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="notifier-report-{stamp}.{suffix}"'},
    )
    return console.finish(request, response)


def _quote(text: str) -> str:
    return quote(text, safe="")


def _uuids(values: list[str]) -> list[UUID]:
    found = []
    for value in values[:1000]:
        try:
            found.append(UUID(value))
        except ValueError:
            continue
    return found


def _counts(results: list[ReplayResult]) -> dict[str, int]:
    counts = summarise(results)
    done = counts.pop(ReplayOutcome.REPLAYED.value, 0)
    return {"done": done, "skipped": sum(counts.values())}


def _done(params: Any) -> dict[str, int] | None:
    done, skipped = params.get("done"), params.get("skipped")
    if done is None or not str(done).isdigit():
        return None
    return {"done": int(done), "skipped": int(skipped) if str(skipped or "").isdigit() else 0}
