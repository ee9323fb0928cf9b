"""RabbitMQ tasks: the events topology and one user per publishing system."""

from __future__ import annotations

import json
import secrets
import sys
from typing import TYPE_CHECKING, Any

import click

from notifier.cli.common import actor_queues, cli_settings, open_app
from notifier.ops.brokeradmin import (
    BrokerAdminError,
    RabbitmqCtl,
    add_publisher,
    bind_status_queue,
    check_name,
    publisher_permissions,
    remove_publisher,
    status_queue_exists,
    status_queue_name,
    vhost_of,
)

if TYPE_CHECKING:
    from notifier.settings import Settings
    from notifier.store.publishers import BrokerPublishers


@click.group()
def broker() -> None:
    """RabbitMQ tasks."""


@broker.command("setup")
def broker_setup() -> None:
    """Declare the events exchange and inbound queue (what publishers need to exist), and
    the callbacks' queue on the status exchange (so no status waits for a worker)."""
    import pika

    from notifier.amqp import QueuePolicy, declare_callback_queue, declare_topology, node_parameters
    from notifier.pipeline.relay import declare_status_exchange

    settings = cli_settings()
    connection = pika.BlockingConnection(node_parameters(settings.broker_url))
    try:
        channel = connection.channel()
        declare_topology(channel, settings.events, QueuePolicy.of(settings))
        declare_status_exchange(channel, settings.statuses)
        if settings.callbacks.enabled:
            declare_callback_queue(channel, settings.statuses.exchange, settings.callbacks)
    finally:
        connection.close()
    click.echo(
        f"exchange {settings.events.exchange!r} → queue {settings.events.queue!r} "
        f"(routing key {settings.events.routing_key!r}); status exchange "
        f"{settings.statuses.exchange!r}"
    )
    if settings.callbacks.enabled:
        click.echo(
            f"exchange {settings.statuses.exchange!r} → queue {settings.callbacks.queue!r} "
            "(every routing key: the publishers' callbacks)"
        )


@broker.command("migrate-queues")
@click.option(
    "--yes", is_flag=True, help="Do not ask; the workers and the API must already be stopped."
)
def migrate_queues_command(yes: bool) -> None:
    """Rebuild notifier's queues with the arguments the settings give them (classic to
    quorum, a new delivery limit), moving every message through a temporary queue with
    publisher confirms and counts checked. Stop the workers and the API first; TTHC
    systems may go on publishing. Safe to run again after an interruption.
    """
    from notifier.amqp import QueuePolicy, describe_nodes
    from notifier.ops.queuemigration import MigrationError, QueueMigration, deployment_queues

    settings = cli_settings()
    if not settings.uses_rabbitmq:
        raise click.ClickException("NOTIFIER_BROKER_URL is not amqp://: nothing to migrate")
    policy = QueuePolicy.of(settings)
    app = open_app(settings)
    try:
        queues = actor_queues(app)
    finally:
        app.close()
    specs = deployment_queues(settings.events, queues, policy)
    if not yes:
        click.confirm(
            f"Migrate {len(specs)} queues on {describe_nodes(settings.broker_url)} to "
            f"{policy.queue_type} (delivery limit {policy.delivery_limit}) with the "
            "workers and the API stopped?",
            abort=True,
        )
    migration = QueueMigration(
        settings.broker_url,
        policy,
        service_users=frozenset(settings.events.service_users),
        progress=click.echo,
    )
    try:
        report = migration.run(specs)
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        migration.close()
    for queue in report.queues:
        click.echo(f"{queue.name}\t{queue.action}\t{queue.moved}")
    click.echo(f"{policy.queue_type} queues; {report.moved} message(s) moved, none lost")


def _broker_connection(settings: Settings) -> Any:
    """A connection as notifier's own broker user (NOTIFIER_BROKER_URL)."""
    import pika

    from notifier.amqp import node_parameters

    try:
        return pika.BlockingConnection(node_parameters(settings.broker_url))
    except Exception as exc:
        raise click.ClickException(
            f"cannot reach RabbitMQ as notifier's own user (NOTIFIER_BROKER_URL): {exc!r}"
        ) from None


def _rebind(
    settings: Settings,
    name: str,
    agencies: list[str],
    previous: tuple[str, ...],
    *,
    create: bool,
) -> list[str] | None:
    """Bind a publisher's status queue to its agencies' statuses (creating the queue
    only if ``create``); None when it has no queue and none is created."""
    queue = status_queue_name(settings.statuses, name)
    connection = _broker_connection(settings)
    try:
        if not create and not status_queue_exists(connection, queue):
            return None
        return bind_status_queue(connection.channel(), settings.statuses, queue, agencies, previous)
    finally:
        connection.close()


# -- one RabbitMQ user per publishing system (notifier.ops.brokeradmin) --------------


def _read_password(generate: bool) -> tuple[str, bool]:
    if generate:
        return secrets.token_urlsafe(24), True
    if sys.stdin.isatty():
        entered = click.prompt(
            "Password for the publisher", hide_input=True, confirmation_prompt=True
        )
        return str(entered), False
    return sys.stdin.readline().rstrip("\r\n"), False


def _agencies(agencies: tuple[str, ...], every_agency: bool) -> list[str]:
    from notifier.events import CODE_PATTERN
    from notifier.store.publishers import EVERY_AGENCY

    if every_agency == bool(agencies):
        raise click.UsageError("give --agency CODE (repeatable), or --every-agency")
    for code in agencies:
        if not CODE_PATTERN.fullmatch(code):
            raise click.UsageError(f"{code!r} is not an agency code")
    return [EVERY_AGENCY] if every_agency else sorted(set(agencies))


def _publishers(settings: Settings) -> BrokerPublishers:
    from notifier.store import Database
    from notifier.store.publishers import BrokerPublishers

    return BrokerPublishers(Database(settings.database_url))


_AGENCY_OPTIONS = (
    click.option(
        "--agency",
        "agencies",
        multiple=True,
        help="An agency code this publisher may publish for (repeatable).",
    ),
    click.option(
        "--every-agency",
        is_flag=True,
        help="May publish for every agency (a shared one-stop system, say).",
    ),
)


def _with_agency_options(command: Any) -> Any:
    for option in reversed(_AGENCY_OPTIONS):
        command = option(command)
    return command


@broker.command("add-publisher")
@click.argument("name")
@_with_agency_options
@click.option("--vhost", help="Virtual host (default: the one in NOTIFIER_BROKER_URL).")
@click.option(
    "--generate-password",
    is_flag=True,
    help="Generate a password and print it once; otherwise it is read from standard input.",
)
@click.option("--update-password", is_flag=True, help="Re-key an existing user (rotation).")
@click.option(
    "--status-queue/--no-status-queue",
    default=True,
    show_default=True,
    help="Give it its own status queue (notifier.statuses.NAME), bound to its agencies' "
    "statuses, with read permission on that queue only.",
)
@click.option("--rabbitmqctl", "executable", default="rabbitmqctl", show_default=True)
def add_publisher_command(
    name: str,
    agencies: tuple[str, ...],
    every_agency: bool,
    vhost: str | None,
    generate_password: bool,
    update_password: bool,
    status_queue: bool,
    executable: str,
) -> None:
    """Create a RabbitMQ user for one TTHC system: it may publish dossier events to the
    events exchange, and nothing else (no queues, no reading, no other exchange), and
    only for the agencies given (checked on its messages' user_id). It may read its own
    status queue, which notifier binds to those agencies' statuses (--no-status-queue:
    none).

    The password is read from standard input (one line), or generated with
    --generate-password; it is passed to rabbitmqctl on its standard input, never as
    an argument.
    """
    # A password rotation keeps the agencies unless new ones are given.
    keep = update_password and not agencies and not every_agency
    chosen = [] if keep else _agencies(agencies, every_agency)
    settings = cli_settings()
    try:
        queue = status_queue_name(settings.statuses, name) if status_queue else None
        target = vhost or vhost_of(settings.broker_url)
        password, generated = _read_password(generate_password)
        add_publisher(
            RabbitmqCtl(executable),
            name,
            password,
            vhost=target,
            events=settings.events,
            update_password=update_password,
            status_queue=queue,
        )
    except BrokerAdminError as exc:
        raise click.ClickException(str(exc)) from None
    previous = _publishers(settings).agencies_of([name]).get(name, ())
    if keep:
        chosen = list(previous)
    bindings = (
        _rebind(settings, name, chosen, previous, create=True)
        if queue is not None and chosen
        else None
    )
    if not keep:
        _publishers(settings).set(name, chosen)
    permissions = publisher_permissions(settings.events, queue)
    click.echo(
        f"publisher {name!r} on vhost {target!r}: configure {permissions.configure!r}, "
        f"write {permissions.write!r}, read {permissions.read!r}; routing key "
        f"{settings.events.routing_key!r} only; agencies: {', '.join(chosen) or 'none registered'}"
    )
    if bindings is not None:
        click.echo(
            f"status queue {queue!r} bound to {settings.statuses.exchange!r} with "
            f"{', '.join(bindings)}"
        )
    if generated:
        click.echo(f"password (shown once): {password}")


@broker.command("remove-publisher")
@click.argument("name")
@click.option("--rabbitmqctl", "executable", default="rabbitmqctl", show_default=True)
def remove_publisher_command(name: str, executable: str) -> None:
    """Delete a publisher's RabbitMQ user (revokes its access at once) and its agencies."""
    settings = cli_settings()
    try:
        remove_publisher(RabbitmqCtl(executable), name)
    except BrokerAdminError as exc:
        raise click.ClickException(str(exc)) from None
    _publishers(settings).remove(name)
    click.echo(f"removed publisher {name!r}")
    queue = status_queue_name(settings.statuses, name)
    try:
        connection = _broker_connection(settings)
    except click.ClickException as exc:
        click.echo(f"its status queue {queue!r} was not deleted: {exc.message}", err=True)
        return
    try:
        if status_queue_exists(connection, queue):
            connection.channel().queue_delete(queue=queue)
            click.echo(f"deleted its status queue {queue!r}")
    finally:
        connection.close()


@broker.command("set-agencies")
@click.argument("name")
@_with_agency_options
def set_agencies_command(name: str, agencies: tuple[str, ...], every_agency: bool) -> None:
    """Set the agencies an existing broker user may publish for (replaces its list).

    For a user created before notifier bound publishers to agencies, or by other means
    (e.g. deploy/rabbitmq-definitions.json). Takes effect on the next event. Its status
    queue, if it has one, is rebound to the new agencies' statuses.
    """
    chosen = _agencies(agencies, every_agency)
    settings = cli_settings()
    publishers = _publishers(settings)
    previous = publishers.agencies_of([check_name(name)]).get(name, ())
    bindings = _rebind(settings, name, chosen, previous, create=False)
    publishers.set(name, chosen)
    click.echo(f"publisher {name!r}: agencies {', '.join(chosen)}")
    if bindings is not None:
        click.echo(f"status queue rebound with {', '.join(bindings)}")


@broker.command("publishers")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
def publishers_command(as_json: bool) -> None:
    """List the broker users notifier knows, with the agencies each may publish for."""
    for publisher in _publishers(cli_settings()).list():
        if as_json:
            click.echo(json.dumps({"name": publisher.name, "agencies": list(publisher.agencies)}))
        else:
            click.echo(f"{publisher.name}\t{', '.join(publisher.agencies)}")
