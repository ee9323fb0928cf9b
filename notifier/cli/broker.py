"""RabbitMQ tasks: the events topology and one user per publishing system."""

from __future__ import annotations

import json
import secrets
import sys
from typing import TYPE_CHECKING, Any

import click

from notifier.cli.common import cli_settings
from notifier.ops.brokeradmin import (
    BrokerAdminError,
    RabbitmqCtl,
    add_publisher,
    check_name,
    publisher_permissions,
    remove_publisher,
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

    from notifier.amqp import connection_parameters, declare_callback_queue, declare_topology

    settings = cli_settings()
    connection = pika.BlockingConnection(connection_parameters(settings.broker_url))
    try:
        channel = connection.channel()
        declare_topology(channel, settings.events)
        if settings.callbacks.enabled:
            declare_callback_queue(channel, settings.callbacks)
    finally:
        connection.close()
    click.echo(
        f"exchange {settings.events.exchange!r} → queue {settings.events.queue!r} "
        f"(routing key {settings.events.routing_key!r})"
    )
    if settings.callbacks.enabled:
        click.echo(
            f"exchange {settings.callbacks.exchange!r} → queue {settings.callbacks.queue!r} "
            "(every routing key: the publishers' callbacks)"
        )


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
@click.option("--rabbitmqctl", "executable", default="rabbitmqctl", show_default=True)
def add_publisher_command(
    name: str,
    agencies: tuple[str, ...],
    every_agency: bool,
    vhost: str | None,
    generate_password: bool,
    update_password: bool,
    executable: str,
) -> None:
    """Create a RabbitMQ user for one TTHC system: it may publish dossier events to the
    events exchange, and nothing else (no queues, no reading, no other exchange), and
    only for the agencies given (checked on its messages' user_id).

    The password is read from standard input (one line), or generated with
    --generate-password; it is passed to rabbitmqctl on its standard input, never as
    an argument.
    """
    # A password rotation keeps the agencies unless new ones are given.
    keep = update_password and not agencies and not every_agency
    chosen = [] if keep else _agencies(agencies, every_agency)
    settings = cli_settings()
    try:
        target = vhost or vhost_of(settings.broker_url)
        password, generated = _read_password(generate_password)
        add_publisher(
            RabbitmqCtl(executable),
            name,
            password,
            vhost=target,
            events=settings.events,
            update_password=update_password,
        )
    except BrokerAdminError as exc:
        raise click.ClickException(str(exc)) from None
    if keep:
        chosen = list(_publishers(settings).agencies_of([name]).get(name, ("none registered",)))
    else:
        _publishers(settings).set(name, chosen)
    permissions = publisher_permissions(settings.events)
    click.echo(
        f"publisher {name!r} on vhost {target!r}: configure {permissions.configure!r}, "
        f"write {permissions.write!r}, read {permissions.read!r}; routing key "
        f"{settings.events.routing_key!r} only; agencies: {', '.join(chosen)}"
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


@broker.command("set-agencies")
@click.argument("name")
@_with_agency_options
def set_agencies_command(name: str, agencies: tuple[str, ...], every_agency: bool) -> None:
    """Set the agencies an existing broker user may publish for (replaces its list).

    For a user created before notifier bound publishers to agencies, or by other means
    (e.g. deploy/rabbitmq-definitions.json). Takes effect on the next event.
    """
    chosen = _agencies(agencies, every_agency)
    _publishers(cli_settings()).set(check_name(name), chosen)
    click.echo(f"publisher {name!r}: agencies {', '.join(chosen)}")


@broker.command("publishers")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
def publishers_command(as_json: bool) -> None:
    """List the broker users notifier knows, with the agencies each may publish for."""
    for publisher in _publishers(cli_settings()).list():
        if as_json:
            click.echo(json.dumps({"name": publisher.name, "agencies": list(publisher.agencies)}))
        else:
            click.echo(f"{publisher.name}\t{', '.join(publisher.agencies)}")
