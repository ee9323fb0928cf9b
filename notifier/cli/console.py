"""What the operator console shows, for scripts (a table, or JSON with ``--json``):
``overview``, ``dossier``, ``dead-letters``, ``providers``, and the ``report`` of counts
and delivery times. See docs/operations.md for the parity table.

Heavy imports stay inside the commands, so ``notifier --help`` stays quick.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from notifier.cli.common import as_utc, cli_settings, delivery_log, echo_json, print_table

if TYPE_CHECKING:
    from notifier.settings import Settings


def _configured(settings: Settings) -> dict[str, list[str]]:
    from notifier.plugins.registry import Registry

    try:
        registry = Registry.from_settings(settings)
    except Exception:  # an unconfigured adapter must not hide the health table
        return {}
    return {c: [p.name for p in ps] for c, ps in registry.channels.items()}


@click.command()
@click.option(
    "--window", type=click.Choice(["hour", "day", "month"]), default="day", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="JSON (with the per-bucket series).")
def overview(window: str, as_json: bool) -> None:
    """Deliveries per channel and status over the last hour, day or 30 days."""
    from notifier.web.console.views import overview as build

    data = build(delivery_log(), window)
    if as_json:
        echo_json(data.as_json())
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
    print_table(rows, ("channel", *statuses, "total", "failure_rate"))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@click.command()
@click.argument("code")
@click.option("--json", "as_json", is_flag=True)
def dossier(code: str, as_json: bool) -> None:
    """A dossier's events and deliveries, each with its attempt timeline."""
    from notifier.web.console.views import dossier_json

    timeline = delivery_log().dossier(code)
    if not timeline.events and not timeline.deliveries:
        raise click.ClickException(f"no events or deliveries for dossier {code!r}")
    if as_json:
        echo_json(dossier_json(timeline))
        return
    click.echo(f"dossier {code}\n\nevents:")
    print_table(
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
            print_table(
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
        since=as_utc(since),
        until=as_utc(until),
        limit=limit,
    )
    items, total = views.dead_letters(delivery_log(), query)
    if as_json:
        for item in items:
            click.echo(json.dumps(item.as_json(), ensure_ascii=False))
        return
    print_table(
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

    settings = cli_settings()
    items = build(delivery_log(settings), _configured(settings))
    if as_json:
        echo_json([i.as_json() for i in items])
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
    print_table(
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
    built = build_report(delivery_log(), since, until, timezone_name=tz)
    if output_format == "table":
        click.echo(
            f"{since.isoformat()} → {until.isoformat()}: {built.events} events, "
            f"{built.deliveries} deliveries, {built.rejected_events} rejected events\n"
        )
        print_table(
            [r.__dict__ for r in built.rows],
            ("agency_code", "procedure_code", "channel", "status", "count"),
        )
        if built.reasons:
            click.echo("\nheld or suppressed (not failures), by reason:")
            print_table([r.__dict__ for r in built.reasons], ("channel", "kind", "reason", "count"))
        click.echo("\ndelivery time, seconds from the event to the send:")
        print_table(
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
