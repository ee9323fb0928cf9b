"""Database tasks: schema migrations, the hourly rollup and the personal-data purge."""

from __future__ import annotations

import json

import click

from notifier.cli.common import cli_settings, open_database
from notifier.settings import SettingsError


@click.group()
def db() -> None:
    """Database schema tasks."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations (safe to run on every deploy)."""
    from notifier.store.migrate import upgrade

    upgrade(open_database(cli_settings()))
    click.echo("database is up to date")


@db.command("rollup")
@click.option("--rebuild", is_flag=True, help="Roll up every settled hour afresh.")
@click.option(
    "--max-hours", type=click.IntRange(min=1), default=None, help="At most this many hours."
)
def db_rollup(rebuild: bool, max_hours: int | None) -> None:
    """Refresh the hourly rollup reports read (what workers do every minute)."""
    from notifier.store.deliveries.rollups import Rollups

    settings = cli_settings()
    rollups = Rollups(open_database(settings))
    if not rollups.enabled:
        click.echo("SQLite reads the delivery log directly: nothing to roll up")
        return
    if rebuild:
        click.echo(f"rolled up every hour before {rollups.rebuild():%Y-%m-%d %H:%M} UTC")
        return
    report = rollups.refresh(max_hours=max_hours or settings.rollup.max_hours)
    until = (
        "nothing yet"
        if report.rolled_until is None
        else f"{report.rolled_until:%Y-%m-%d %H:%M} UTC"
    )
    click.echo(
        f"recomputed {report.recomputed} changed hours, rolled up {report.rolled} new hours; "
        f"rolled up until {until}"
    )


@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
def purge_command(dry_run: bool, as_json: bool) -> None:
    """Purge personal data past its retention period (what workers do every hour)."""
    from notifier.app import Notifier
    from notifier.cli.progress import on_terminal, progress
    from notifier.ops.retention import Retention

    try:
        app = Notifier(cli_settings())
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        retention = Retention(app.database, app.settings, registry=app.registry)
        if dry_run or not on_terminal(as_json):
            report = retention.purge(dry_run=dry_run)
        else:  # count first, so the bar knows how far there is to go
            total = retention.purge(dry_run=True).total
            with progress(total, "purging") as advance:
                report = retention.purge(on_batch=advance)
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps(report.as_json(), ensure_ascii=False))
        return
    verb = "would clear" if dry_run else "cleared"
    click.echo(
        f"{verb}: {report.deliveries} deliveries' contacts and bodies "
        f"(created before {report.deliveries_before:%Y-%m-%d %H:%M} UTC), "
        f"{report.events} event payloads, {report.rejects} rejected payloads, "
        f"{report.inbound} citizens' message texts"
    )
    click.echo(
        f"{'would delete' if dry_run else 'deleted'}: {report.inbox} inbox notifications "
        f"(before {report.inbox_before:%Y-%m-%d %H:%M} UTC), {report.nonces} receipt nonces, "
        f"{report.statuses} status outbox rows"
    )
