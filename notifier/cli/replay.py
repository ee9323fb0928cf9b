"""Send again through the normal path: ``notifier replay`` (dead letters, rejected
events) and ``notifier deliveries resolve`` (deliveries held as ``unknown``).

Needs the workers' RabbitMQ; with the embedded broker, replay from the console.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import click

from notifier.cli.common import as_utc, cli_settings, open_app

if TYPE_CHECKING:
    from notifier.ops.replay import Replayer, ReplayResult


@contextlib.contextmanager
def _replayer() -> Iterator[Replayer]:
    """A Replayer on an app connected to the workers' RabbitMQ, closed after use."""
    from notifier.ops.replay import Replayer

    settings = cli_settings()
    if not settings.uses_rabbitmq:
        raise click.ClickException(
            "replay from the command line needs RabbitMQ (NOTIFIER_BROKER_URL=amqp://...), "
            "where the workers are; with the embedded broker, replay from the console"
        )
    app = open_app(settings)
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
        since=as_utc(since),
        until=as_utc(until),
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
            actor=_actor(), since=as_utc(since), until=as_utc(until), dry_run=dry_run
        )
        _report_results(results, as_json)
