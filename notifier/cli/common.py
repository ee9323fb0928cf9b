"""What every ``notifier`` command shares: settings and the app opened with a clear
error, the database, the delivery log, and plain tables for people (JSON is for scripts).

Kept light to import (click and the settings only): every topic module of the CLI
imports it when ``notifier --help`` runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from notifier.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from notifier.app import Notifier
    from notifier.store import Database
    from notifier.store.deliveries.log import DeliveryLog

DELIVERY_COLUMNS = (
    "created_at",
    "dossier_code",
    "channel",
    "recipient",
    "status",
    "attempts",
    "provider",
    "last_error",
)


def cli_settings() -> Settings:
    """The settings, or a one-line error (no traceback) when they are invalid."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def open_app(settings: Settings | None = None) -> Notifier:
    """The app with logging configured; close it after use."""
    from notifier.app import Notifier
    from notifier.logging import configure_logging

    settings = settings or cli_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        return Notifier(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def actor_queues(app: Notifier) -> list[str]:
    """The Dramatiq queues of this deployment (ingest, then one per channel)."""
    return [app.ingest_actor.queue_name] + [a.queue_name for a in app.deliver_actors.values()]


def check_broker_queues(app: Notifier) -> None:
    """Stop with a clear error, before anything starts, if RabbitMQ holds notifier's
    queues with other arguments than the settings give (a deployment whose queues were
    classic, now set to quorum): every declaration would fail with a 406."""
    from pika.exceptions import AMQPError

    from notifier.amqp import QueuePolicy
    from notifier.logging import get_logger
    from notifier.ops.queuemigration import MigrationError, check_queues

    settings = app.settings
    try:
        check_queues(
            settings.broker_url, settings.events, actor_queues(app), QueuePolicy.of(settings)
        )
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    except AMQPError as exc:
        # RabbitMQ is not up yet: the process connects when it is, as it always did.
        get_logger(__name__).warning("could not check the queues", error=repr(exc))


def open_database(settings: Settings) -> Database:
    from notifier.store import Database

    return Database(settings.database_url)


def delivery_log(settings: Settings | None = None) -> DeliveryLog:
    from notifier.store.deliveries.log import DeliveryLog

    settings = settings or cli_settings()
    return DeliveryLog(open_database(settings), settings.recipient_hash_key.get_secret_value())


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table; JSON output is the form for scripts."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def echo_json(value: Any) -> None:
    """One indented JSON document (dates as text)."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def as_utc(value: datetime | None) -> datetime | None:
    """click.DateTime values are naive: they are UTC, as in ``notifier deliveries``."""
    return None if value is None else value.replace(tzinfo=UTC)
