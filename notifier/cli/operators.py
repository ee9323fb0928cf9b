"""Operators' commands: what the console shows, for scripts (a table, or JSON with
``--json``), plus ``report``, ``replay`` and ``operators``. Registered on the ``notifier``
group at the end of :mod:`notifier.cli.main`; see docs/operations.md for the parity table.

Heavy imports stay inside the commands, so ``notifier --help`` stays quick.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import click

if TYPE_CHECKING:
    from notifier.app import Notifier
    from notifier.ops.replay import Replayer, ReplayResult
    from notifier.settings import Settings
    from notifier.store.deliveries.log import DeliveryLog


def _settings() -> Settings:
    from notifier.cli.main import _settings as load

    return load()


def _log(settings: Settings | None = None) -> DeliveryLog:
    from notifier.store import Database
    from notifier.store.deliveries.log import DeliveryLog

    settings = settings or _settings()
    return DeliveryLog(
        Database(settings.database_url), settings.recipient_hash_key.get_secret_value()
    )


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    from notifier.cli.main import print_table

    print_table(rows, columns)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _utc(value: datetime | None) -> datetime | None:
    """click.DateTime values are naive: they are UTC, as in ``notifier deliveries``."""
    return None if value is None else value.replace(tzinfo=UTC)


def _configured(settings: Settings) -> dict[str, list[str]]:
    from notifier.plugins.registry import Registry

    try:
        registry = Registry.from_settings(settings)
    except Exception:  # an unconfigured adapter must not hide the health table
        return {}
    return {c: [p.name for p in ps] for c, ps in registry.channels.items()}


# -- what the console shows -------------------------------------------------------------


@click.command()
@click.option(
    "--window", type=click.Choice(["hour", "day", "month"]), default="day", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="JSON (with the per-bucket series).")
def overview(window: str, as_json: bool) -> None:
    """Deliveries per channel and status over the last hour, day or 30 days."""
    from notifier.web.console.views import overview as build

    data = build(_log(), window)
    if as_json:
        _echo_json(data.as_json())
        return
    median = data.latency.get("*")
    click.echo(
        f"{window}: {data.total} deliveries since {data.window.start:%Y-%m-%d %H:%M} UTC; "
        f"sent {data.sent}, failed {data.failed}, in flight {data.in_flight}; "
        f"failure rate {_percent(data.failure_rate)}; median event→sent "
        f"{'-' if median is None or median.p50 is None else f'{median.p50:.1f}s'}"
    )
    click.echo(
        f"dead letters {data.dead_letters}, rejected events {data.rejected_events}, "
        f"open circuits {data.open_circuits}\n"
    )
    statuses = sorted({s for counts in data.by_channel.values() for s in counts})
    rows = [
        {
            "channel": channel,
            **counts,
            "total": sum(counts.values()),
            "failure_rate": _percent(data.channel_failure_rates.get(channel)),
        }
        for channel, counts in data.by_channel.items()
    ]
    _table(rows, ("channel", *statuses, "total", "failure_rate"))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@click.command()
@click.argument("code")
@click.option("--json", "as_json", is_flag=True)
def dossier(code: str, as_json: bool) -> None:
    """A dossier's events and deliveries, each with its attempt timeline."""
    from notifier.web.console.views import dossier_json

    timeline = _log().dossier(code)
    if not timeline.events and not timeline.deliveries:
        raise click.ClickException(f"no events or deliveries for dossier {code!r}")
    if as_json:
        _echo_json(dossier_json(timeline))
        return
    click.echo(f"dossier {code}\n\nevents:")
    _table(
        [e.__dict__ for e in timeline.events],
        ("occurred_at", "status", "agency_code", "procedure_code", "source_system", "event_id"),
    )
    for item in timeline.deliveries:
        d = item.delivery
        fallback = f", fallback of {d.fallback_of}" if d.fallback_of else ""
        click.echo(
            f"\n{d.channel} to {d.recipient}: {d.status} (attempts {d.attempts}, "
            f"provider {d.provider or '-'}, id {d.provider_message_id or '-'}{fallback})"
            f"\n  delivery {d.delivery_id}"
        )
        if item.attempts:
            _table(
                [a.__dict__ for a in item.attempts],
                ("finished_at", "number", "provider", "outcome", "error_code", "error"),
            )


@click.command("dead-letters")
@click.option(
    "--kind",
    type=click.Choice(["exhausted", "permanent", "temporary"]),
    default="exhausted",
    show_default=True,
    help="exhausted: failed after all retries; permanent: every permanent failure; "
    "temporary: failures waiting for a retry.",
)
@click.option("--channel")
@click.option("--agency", "agency_code")
@click.option("--dossier", "dossier_code")
@click.option("--since", type=click.DateTime(), help="UTC, e.g. 2026-11-26T08:00:00")
@click.option("--until", type=click.DateTime())
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
def dead_letters(
    kind: str,
    channel: str | None,
    agency_code: str | None,
    dossier_code: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Failed deliveries (replay them with `notifier replay`)."""
    from notifier.web.console import views

    query = views.dead_letter_query(
        kind,
        channel=channel,
        agency_code=agency_code,
        dossier_code=dossier_code,
        since=_utc(since),
        until=_utc(until),
        limit=limit,
    )
    items, total = views.dead_letters(_log(), query)
    if as_json:
        for item in items:
            click.echo(json.dumps(item.as_json(), ensure_ascii=False))
        return
    _table(
        [
            {
                **item.delivery.__dict__,
                "fallbacks": ",".join(f"{f.channel}:{f.status}" for f in item.fallbacks),
            }
            for item in items
        ],
        (
            "created_at",
            "delivery_id",
            "dossier_code",
            "channel",
            "recipient",
            "attempts",
            "last_error",
            "fallbacks",
        ),
    )
    if total > len(items):
        click.echo(f"... {total - len(items)} more (--limit)")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def providers(as_json: bool) -> None:
    """Provider health: circuit state, quota/rate-limit details, recent error rates."""
    from notifier.web.console.views import providers as build

    settings = _settings()
    items = build(_log(settings), _configured(settings))
    if as_json:
        _echo_json([i.as_json() for i in items])
        return
    rows = []
    for item in items:
        plain = item.as_json()
        hour, day = plain["last_hour"] or {}, plain["last_day"] or {}
        rows.append(
            {
                **plain,
                "errors_1h": f"{_percent(hour.get('error_rate'))} of {hour.get('attempts', 0)}",
                "errors_24h": f"{_percent(day.get('error_rate'))} of {day.get('attempts', 0)}",
                "details": json.dumps(plain["details"], ensure_ascii=False)
                if plain["details"]
                else None,
            }
        )
    _table(
        rows,
        (
            "provider",
            "channel",
            "circuit_state",
            "consecutive_failures",
            "errors_1h",
            "errors_24h",
            "details",
            "last_error",
        ),
    )


# -- reports ----------------------------------------------------------------------------


@click.command()
@click.option("--from", "start", help="Start date or date-time (ISO 8601), included.")
@click.option("--to", "end", help="End, excluded (default: a day after a start date).")
@click.option("--day", help="One day, e.g. 2026-11-26 (instead of --from/--to).")
@click.option(
    "--tz",
    default="Asia/Ho_Chi_Minh",
    show_default=True,
    help="Time zone of dates without one.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "csv", "table"]),
    default="json",
    show_default=True,
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
def report(
    start: str | None,
    end: str | None,
    day: str | None,
    tz: str,
    output_format: str,
    output: Path | None,
) -> None:
    """Counts per agency, procedure, channel and status, and delivery time percentiles
    (item 20 of letter 3109/BTTTT-CĐSQG), for a day or a range."""
    from notifier.ops.reports import ReportError, build_report, report_range, zone

    try:
        since, until = report_range(start, end, day, zone(tz))
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    built = build_report(_log(), since, until, timezone_name=tz)
    if output_format == "table":
        click.echo(
            f"{since.isoformat()} → {until.isoformat()}: {built.events} events, "
            f"{built.deliveries} deliveries, {built.rejected_events} rejected events\n"
        )
        _table(
            [r.__dict__ for r in built.rows],
            ("agency_code", "procedure_code", "channel", "status", "count"),
        )
        click.echo("\ndelivery time, seconds from the event to the send:")
        _table(
            [{"channel": c, **p.__dict__} for c, p in built.latency.items()],
            ("channel", "count", "p50", "p90", "p95", "p99"),
        )
        return
    text = (
        built.as_csv()
        if output_format == "csv"
        else json.dumps(built.as_json(), ensure_ascii=False, indent=2) + "\n"
    )
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, "utf-8")
        click.echo(f"wrote {output}", err=True)


# -- replay -----------------------------------------------------------------------------


@contextlib.contextmanager
def _replayer() -> Iterator[Replayer]:
    """A Replayer on an app connected to the workers' RabbitMQ, closed after use."""
    from notifier.cli.main import _app
    from notifier.ops.replay import Replayer

    settings = _settings()
    if not settings.uses_rabbitmq:
        raise click.ClickException(
            "replay from the command line needs RabbitMQ (NOTIFIER_BROKER_URL=amqp://...), "
            "where the workers are; with the embedded broker, replay from the console"
        )
    app: Notifier = _app(settings)
    try:
        yield Replayer(app)
    finally:
        app.close()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


def _report_results(results: list[ReplayResult], as_json: bool) -> None:
    from notifier.ops.replay import ReplayOutcome, summarise

    if as_json:
        for result in results:
            click.echo(json.dumps(result.as_json(), ensure_ascii=False))
    else:
        for result in results:
            click.echo(
                f"{result.kind} {result.id}: {result.outcome.value}"
                + (f" ({result.detail})" if result.detail else "")
            )
        counts = summarise(results)
        click.echo(
            "summary: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing")
        )
    if any(r.outcome is ReplayOutcome.FAILED for r in results):
        sys.exit(1)


@click.command("resolve")
@click.argument("ids", nargs=-1, required=True, type=click.UUID)
@click.option("--resend", "resolution", flag_value="resend", help="Send it again.")
@click.option(
    "--mark-sent", "resolution", flag_value="mark-sent", help="Record it as sent (no send)."
)
@click.option("--json", "as_json", is_flag=True)
def resolve(ids: tuple[UUID, ...], resolution: str | None, as_json: bool) -> None:
    """Decide on deliveries held as `unknown` (a call whose outcome is unknown, to a
    provider that does not drop repeats): resend them, or mark them sent. Look at the
    provider's own records (its console, the citizen) before resending."""
    from notifier.ops.replay import Resolution

    if resolution is None:
        raise click.UsageError("say --resend or --mark-sent")
    with _replayer() as replayer:
        _report_results(
            [replayer.resolve(i, Resolution(resolution), actor=_actor()) for i in ids], as_json
        )


@click.group()
def replay() -> None:
    """Send dead letters and rejected events again, through the normal path.

    Idempotent: a delivery is reset from failed to queued only if it is still failed,
    and a rejected event is re-submitted once (ingest dedupes by event id).
    """


@replay.command("delivery")
@click.argument("ids", nargs=-1, required=True, type=click.UUID)
@click.option("--json", "as_json", is_flag=True)
def replay_delivery(ids: tuple[UUID, ...], as_json: bool) -> None:
    """Replay failed deliveries by id."""
    with _replayer() as replayer:
        _report_results([replayer.delivery(i, actor=_actor()) for i in ids], as_json)


@replay.command("dead-letters")
@click.option(
    "--kind",
    type=click.Choice(["exhausted", "permanent", "temporary"]),
    default="exhausted",
    show_default=True,
)
@click.option("--channel")
@click.option("--agency", "agency_code")
@click.option("--dossier", "dossier_code")
@click.option("--since", type=click.DateTime(), help="UTC")
@click.option("--until", type=click.DateTime(), help="UTC")
@click.option("--all", "everything", is_flag=True, help="Needed when no filter is given.")
@click.option(
    "--include-told-by-fallback",
    is_flag=True,
    help="Also those whose fallback channel already reached the citizen.",
)
@click.option("--dry-run", is_flag=True, help="List what would be replayed.")
@click.option("--json", "as_json", is_flag=True)
def replay_dead_letters(
    kind: str,
    channel: str | None,
    agency_code: str | None,
    dossier_code: str | None,
    since: datetime | None,
    until: datetime | None,
    everything: bool,
    include_told_by_fallback: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Replay every dead letter matching the filters (or --all of them)."""
    from notifier.web.console.views import dead_letter_query

    if not everything and not any((channel, agency_code, dossier_code, since, until)):
        raise click.UsageError("give a filter (--channel, --agency, ...) or --all")
    query = dead_letter_query(
        kind,
        channel=channel,
        agency_code=agency_code,
        dossier_code=dossier_code,
        since=_utc(since),
        until=_utc(until),
    )
    from notifier.cli.progress import progress
    from notifier.ops.replay import ReplayOutcome

    with _replayer() as replayer:
        # The plan first (what matches, which fallbacks already told the citizen), then
        # one replay at a time, so a terminal can show how far it got.
        planned = replayer.deliveries(
            query,
            actor=_actor(),
            include_told_by_fallback=include_told_by_fallback,
            dry_run=True,
        )
        if dry_run:
            _report_results(planned, as_json)
            return
        to_replay = sum(1 for p in planned if p.outcome is ReplayOutcome.REPLAYED)
        results = []
        with progress(to_replay, "replaying", as_json=as_json) as advance:
            for plan in planned:
                if plan.outcome is ReplayOutcome.REPLAYED:
                    results.append(replayer.delivery(plan.id, actor=_actor()))
                    advance(1)
                else:
                    results.append(plan)
        _report_results(results, as_json)


@replay.command("reject")
@click.argument("ids", nargs=-1, required=True, type=click.UUID)
@click.option("--json", "as_json", is_flag=True)
def replay_reject(ids: tuple[UUID, ...], as_json: bool) -> None:
    """Re-submit rejected events by id."""
    with _replayer() as replayer:
        _report_results([replayer.reject(i, actor=_actor()) for i in ids], as_json)


@replay.command("rejects")
@click.option("--since", type=click.DateTime(), help="UTC")
@click.option("--until", type=click.DateTime(), help="UTC")
@click.option("--all", "everything", is_flag=True, help="Needed without --since/--until.")
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def replay_rejects(
    since: datetime | None,
    until: datetime | None,
    everything: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Re-submit every rejected event not replayed yet (in a range, or --all)."""
    if not everything and since is None and until is None:
        raise click.UsageError("give --since/--until or --all")
    with _replayer() as replayer:
        results = replayer.rejects(
            actor=_actor(), since=_utc(since), until=_utc(until), dry_run=dry_run
        )
        _report_results(results, as_json)


# -- operator accounts ------------------------------------------------------------------


def _operators() -> Any:
    from notifier.store import Database
    from notifier.store.operators import OperatorStore

    return OperatorStore(Database(_settings().database_url))


def _password(from_stdin: bool) -> str:
    """From standard input (scripts) or a hidden prompt, never from an argument."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("no password given")
    return password


@click.group()
def operators() -> None:
    """Console accounts (passwords stored as scrypt hashes) and API tokens for scripts."""


@operators.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "admin"]), default="viewer", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def operators_add(username: str, role: str, password_stdin: bool) -> None:
    """Create an account (viewer reads; admin also replays)."""
    from notifier.store.operators import OperatorError

    store = _operators()
    try:
        added = store.add(username, _password(password_stdin), role)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {added.username} ({added.role.value})")


@operators.command("list")
@click.option("--json", "as_json", is_flag=True)
def operators_list(as_json: bool) -> None:
    rows = [
        {
            "username": o.username,
            "role": o.role.value,
            "created_at": o.created_at,
            "disabled_at": o.disabled_at,
        }
        for o in _operators().list()
    ]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    _table(rows, ("username", "role", "created_at", "disabled_at"))


@operators.command("disable")
@click.argument("username")
def operators_disable(username: str) -> None:
    """Disable an account; its sessions end at once (enabling it again revives none)."""
    if not _operators().disable(username):
        raise click.ClickException(f"no active operator named {username!r}")
    click.echo(f"disabled {username}")


@operators.command("sign-out")
@click.argument("username")
def operators_sign_out(username: str) -> None:
    """End every console session of an operator (e.g. a lost laptop)."""
    if _operators().get(username) is None:
        raise click.ClickException(f"no operator named {username!r}")
    ended = _operators().end_sessions(username)
    click.echo(f"ended {ended} session(s) of {username}")


@operators.command("enable")
@click.argument("username")
def operators_enable(username: str) -> None:
    if not _operators().enable(username):
        raise click.ClickException(f"no operator named {username!r}")
    click.echo(f"enabled {username}")


@operators.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True)
def operators_set_password(username: str, password_stdin: bool) -> None:
    """Change a password; every session of the operator ends."""
    from notifier.store.operators import OperatorError

    try:
        changed = _operators().set_password(username, _password(password_stdin))
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    if not changed:
        raise click.ClickException(f"no operator named {username!r}")
    click.echo(f"password changed for {username}")


@operators.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(["viewer", "admin"]))
def operators_set_role(username: str, role: str) -> None:
    if not _operators().set_role(username, role):
        raise click.ClickException(f"no operator named {username!r}")
    click.echo(f"{username} is now {role}")


@operators.command("token")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "admin", "metrics"]),
    default="viewer",
    show_default=True,
    help="viewer: read the console API; admin: also replay; metrics: only /metrics.",
)
def operators_token(name: str, role: str) -> None:
    """Create an API token for scripts or Prometheus; it is shown once."""
    from notifier.store import Database
    from notifier.store.apikeys import ApiKeys

    scope = {"viewer": "operator", "admin": "admin", "metrics": "metrics"}[role]
    from sqlalchemy.exc import IntegrityError

    try:
        key = ApiKeys(Database(_settings().database_url)).create(name, [scope], [])
    except IntegrityError:
        raise click.ClickException(f"an API key named {name!r} exists already") from None
    click.echo(key)


COMMANDS = (overview, dossier, dead_letters, providers, report, replay, operators)
