"""RabbitMQ credentials for TTHC publishers: one user per system, allowed to publish to
the events exchange and nothing else.

RabbitMQ checks three permissions per virtual host, each a regular expression over
resource names (https://www.rabbitmq.com/docs/access-control):

- ``basic.publish`` needs **write** on the exchange published to. The default
  exchange (``""``, which Dramatiq publishes to) is checked under the name
  ``amq.default``, so ``^<events exchange>$`` keeps publishers off Dramatiq's queues.
- ``exchange.declare`` with ``passive=true`` (checking that an exchange exists) needs
  no permission; ``passive=false`` needs **configure**, as does any queue declaration.
- ``basic.consume`` / ``basic.get`` need **read** on the queue.

A publisher therefore gets configure ``^$``, write ``^<events exchange>$``, read
``^$``, and, since the events exchange is a topic exchange, a topic permission that
limits its routing keys to the event's (``^dossier\\.status\\.v1$`` by default). The
integration tests prove each refusal against a real broker.

``notifier broker add-publisher NAME --agency CODE ...`` runs ``rabbitmqctl`` (on the
broker's host, as a user allowed to run it); the password is passed on standard input,
never as an argument (arguments are visible in the process list) and never logged.
``deploy/rabbitmq-definitions.json`` is the same set-up as a definitions file.

It also records, in notifier's database, the agencies the user may publish for.
Publishers set the ``user_id`` message property to their user name; RabbitMQ refuses
a ``user_id`` that is not the connection's user, so the bridge knows who published and
rejects an event for an agency outside that user's list (see notifier.store.publishers).
``notifier broker set-agencies NAME`` changes the list of an existing user.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import click

from notifier.masking import scrub
from notifier.settings import EventsSettings, Settings

if TYPE_CHECKING:
    from notifier.store.publishers import BrokerPublishers

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 16


class BrokerAdminError(Exception):
    """A rabbitmqctl command failed; the message is safe to show."""


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str


def publisher_permissions(events: EventsSettings) -> Permissions:
    """Publish to the events exchange; create nothing, read nothing."""
    return Permissions(configure="^$", write=f"^{re.escape(events.exchange)}$", read="^$")


def publisher_topic_permissions(events: EventsSettings) -> Permissions:
    """On the (topic) events exchange: only the event's routing key."""
    return Permissions(configure="", write=f"^{re.escape(events.routing_key)}$", read="^$")


def vhost_of(broker_url: str) -> str:
    """The virtual host of an amqp:// URL (``/`` when the URL names none)."""
    if not broker_url.startswith(("amqp://", "amqps://")):
        raise BrokerAdminError("the broker URL is not amqp://: set NOTIFIER_BROKER_URL")
    rest = broker_url.split("://", 1)[1]
    path = rest.split("/", 1)[1] if "/" in rest else ""
    path = path.split("?", 1)[0]
    return unquote(path) if path else "/"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise BrokerAdminError(
            "a publisher name is 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


class RabbitmqCtl:
    """Runs ``rabbitmqctl`` commands, secrets on standard input only."""

    def __init__(self, executable: str = "rabbitmqctl", timeout_s: float = 60.0) -> None:
        self.executable = executable
        self.timeout_s = timeout_s

    def run(self, *args: str, stdin: str | None = None) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - fixed executable, argument list, no shell
                [self.executable, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError:
            raise BrokerAdminError(
                f"{self.executable} not found: run this on the RabbitMQ host"
            ) from None
        except subprocess.TimeoutExpired:
            raise BrokerAdminError(f"{self.executable} {args[0]} timed out") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            said = scrub(lines[-1]) if lines else "no output"
            raise BrokerAdminError(
                f"{self.executable} {args[0]} failed (exit {done.returncode}): {said}"
            )
        return done.stdout

    def user_exists(self, name: str) -> bool:
        listed = self.run("-q", "list_users", "--no-table-headers")
        return any(line.split("\t", 1)[0] == name for line in listed.splitlines())


def add_publisher(
    ctl: RabbitmqCtl,
    name: str,
    password: str,
    *,
    vhost: str,
    events: EventsSettings,
    update_password: bool = False,
) -> None:
    """Create (or, with ``update_password``, re-key) a publisher user with its permissions."""
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise BrokerAdminError(f"the password must have {MIN_PASSWORD}+ characters")
    if "\n" in password or "\r" in password:
        raise BrokerAdminError("the password must be one line")
    if ctl.user_exists(name):
        if not update_password:
            raise BrokerAdminError(
                f"user {name!r} exists; pass --update-password to set a new password"
            )
        ctl.run("-q", "change_password", name, stdin=password + "\n")
    else:
        ctl.run("-q", "add_user", name, stdin=password + "\n")
    grant_publisher(ctl, name, vhost=vhost, events=events)


def grant_publisher(ctl: RabbitmqCtl, name: str, *, vhost: str, events: EventsSettings) -> None:
    permissions = publisher_permissions(events)
    ctl.run(
        "-q",
        "set_permissions",
        "-p",
        vhost,
        check_name(name),
        permissions.configure,
        permissions.write,
        permissions.read,
    )
    topic = publisher_topic_permissions(events)
    ctl.run(
        "-q",
        "set_topic_permissions",
        "-p",
        vhost,
        name,
        events.exchange,
        topic.write,
        topic.read,
    )


def remove_publisher(ctl: RabbitmqCtl, name: str) -> None:
    """Delete the user: its connections are closed and its password stops working."""
    ctl.run("-q", "delete_user", check_name(name))


# -- CLI ----------------------------------------------------------------------------------


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


def _loaded_settings() -> Settings:
    from notifier.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


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


@click.command("add-publisher")
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
    settings = _loaded_settings()
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


@click.command("remove-publisher")
@click.argument("name")
@click.option("--rabbitmqctl", "executable", default="rabbitmqctl", show_default=True)
def remove_publisher_command(name: str, executable: str) -> None:
    """Delete a publisher's RabbitMQ user (revokes its access at once) and its agencies."""
    settings = _loaded_settings()
    try:
        remove_publisher(RabbitmqCtl(executable), name)
    except BrokerAdminError as exc:
        raise click.ClickException(str(exc)) from None
    _publishers(settings).remove(name)
    click.echo(f"removed publisher {name!r}")


@click.command("set-agencies")
@click.argument("name")
@_with_agency_options
def set_agencies_command(name: str, agencies: tuple[str, ...], every_agency: bool) -> None:
    """Set the agencies an existing broker user may publish for (replaces its list).

    For a user created before notifier bound publishers to agencies, or by other means
    (e.g. deploy/rabbitmq-definitions.json). Takes effect on the next event.
    """
    chosen = _agencies(agencies, every_agency)
    _publishers(_loaded_settings()).set(check_name(name), chosen)
    click.echo(f"publisher {name!r}: agencies {', '.join(chosen)}")


@click.command("publishers")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
def publishers_command(as_json: bool) -> None:
    """List the broker users notifier knows, with the agencies each may publish for."""
    for publisher in _publishers(_loaded_settings()).list():
        if as_json:
            click.echo(json.dumps({"name": publisher.name, "agencies": list(publisher.agencies)}))
        else:
            click.echo(f"{publisher.name}\t{', '.join(publisher.agencies)}")
