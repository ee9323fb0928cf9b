"""The delivery log and rejected events: ``notifier deliveries`` and ``notifier rejects``."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

import click

from notifier.cli.common import DELIVERY_COLUMNS, delivery_log, print_table


@click.group(invoke_without_command=True)
@click.option("--dossier", "dossier_code", help="Dossier code (mã hồ sơ).")
@click.option("--channel")
@click.option(
    "--status",
    help="queued, sending, sent, delivered, temporary-failure, permanent-failure, "
    "suppressed or unknown (held: resolve with `notifier deliveries resolve`).",
)
@click.option("--agency", "agency_code")
@click.option("--event", "event_id", type=click.UUID)
@click.option("--recipient", help="A full phone or email; matched by its hash, shown masked.")
@click.option("--since", type=click.DateTime(), help="UTC, e.g. 2026-11-26T08:00:00")
@click.option("--until", type=click.DateTime())
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
@click.pass_context
def deliveries(
    ctx: click.Context,
    dossier_code: str | None,
    channel: str | None,
    status: str | None,
    agency_code: str | None,
    event_id: UUID | None,
    recipient: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List and filter the delivery log."""
    if ctx.invoked_subcommand is not None:
        return
    from datetime import UTC

    from notifier.store.deliveries.lifecycle import DeliveryStatus
    from notifier.store.deliveries.log import DeliveryQuery

    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise click.BadParameter(
            f"{status!r}; one of: {', '.join(s.value for s in DeliveryStatus)}",
            param_hint="--status",
        )

    query = DeliveryQuery(
        dossier_code=dossier_code,
        channel=channel,
        status=status,
        agency_code=agency_code,
        event_id=event_id,
        recipient=recipient,
        since=since.replace(tzinfo=UTC) if since else None,
        until=until.replace(tzinfo=UTC) if until else None,
        limit=limit,
    )
    rows = delivery_log().search(query)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_json(), ensure_ascii=False))
        return
    print_table([r.__dict__ for r in rows], DELIVERY_COLUMNS)


@click.command()
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
def rejects(limit: int, as_json: bool) -> None:
    """List rejected events with their reasons."""
    rows = delivery_log().rejects(limit=limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.__dict__, default=str, ensure_ascii=False))
        return
    print_table(
        [{**r.__dict__, "submitted_by": r.submitted_by} for r in rows],
        ("received_at", "source", "submitted_by", "event_id", "reason"),
    )
