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

Each publisher also gets its own **status queue**, ``notifier.statuses.<name>``,
declared and bound by notifier (as its own broker user) to the status exchange with
the keys of the publisher's agencies (``<agency word>.#``; ``#`` for every agency), and
read permission on that queue and nothing else. Binding a queue needs read permission
on the exchange it binds from, which a publisher never has: it cannot bind its queue
(or any) to another agency's statuses, nor read another publisher's queue; RabbitMQ
refuses both with ACCESS_REFUSED. ``set-agencies`` rebinds the queue.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pika

from notifier.masking import scrub
from notifier.pipeline.relay import declare_status_exchange
from notifier.settings import EventsSettings, StatusSettings
from notifier.store.statuses import binding_key

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 16


class BrokerAdminError(Exception):
    """A rabbitmqctl command failed; the message is safe to show."""


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str


def publisher_permissions(events: EventsSettings, status_queue: str | None = None) -> Permissions:
    """Publish to the events exchange; create nothing; read its own status queue only
    (nothing without one). Binding needs read on the exchange bound from, which no
    publisher has: notifier binds its queue, to its agencies' statuses only."""
    read = f"^{re.escape(status_queue)}$" if status_queue else "^$"
    return Permissions(configure="^$", write=f"^{re.escape(events.exchange)}$", read=read)


def status_queue_name(statuses: StatusSettings, name: str) -> str:
    """A publisher's own status queue: ``<queue_prefix>.<its user name>``."""
    return f"{statuses.queue_prefix}.{check_name(name)}"


def bind_status_queue(
    channel: Any,
    statuses: StatusSettings,
    queue: str,
    agencies: Iterable[str],
    previous: Iterable[str] = (),
) -> list[str]:
    """Declare a publisher's status queue (durable) and bind it to its agencies'
    statuses, unbinding those of ``previous`` agencies it no longer has. Runs as
    notifier's own broker user. Returns the binding keys."""
    declare_status_exchange(channel, statuses)
    channel.queue_declare(queue=queue, durable=True)
    wanted = {binding_key(a) for a in agencies}
    for key in sorted({binding_key(a) for a in previous} - wanted):
        channel.queue_unbind(queue=queue, exchange=statuses.exchange, routing_key=key)
    for key in sorted(wanted):
        channel.queue_bind(queue=queue, exchange=statuses.exchange, routing_key=key)
    return sorted(wanted)


def status_queue_exists(connection: Any, queue: str) -> bool:
    """Whether ``queue`` exists (a passive declare, on a channel of its own: the broker
    closes the channel when it does not)."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    channel.close()
    return True


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
    status_queue: str | None = None,
) -> None:
    """Create (or, with ``update_password``, re-key) a publisher user with its
    permissions (read on ``status_queue``, its own, if given)."""
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
    grant_publisher(ctl, name, vhost=vhost, events=events, status_queue=status_queue)


def grant_publisher(
    ctl: RabbitmqCtl,
    name: str,
    *,
    vhost: str,
    events: EventsSettings,
    status_queue: str | None = None,
) -> None:
    permissions = publisher_permissions(events, status_queue)
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
