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

import re
import subprocess
from dataclasses import dataclass
from urllib.parse import unquote

from notifier.masking import scrub
from notifier.settings import EventsSettings

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
