"""The AMQP contract: broker nodes, the events exchange and inbound queue, and the one
set of queue arguments every process declares notifier's queues with.

Several nodes: ``NOTIFIER_BROKER_URL`` may name the nodes of a cluster in one URL,
``amqp://user:pass@rmq1:5672,rmq2:5672,rmq3:5672/vhost`` (credentials, vhost and query
options shared), as libpq does for PostgreSQL hosts. Each process tries the nodes in
an order of its own (so connections spread over the cluster) and, when its node dies,
reconnects to the next live one.

Queue arguments: RabbitMQ refuses (406 PRECONDITION_FAILED) a declaration whose
arguments differ from the queue's, so the worker, the bridge, the API, the CLI and the
dead-letter recorder all take them from :class:`QueuePolicy`, never spell them out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import pika
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

from notifier.settings import CallbackSettings, EventsSettings, Settings

# Dramatiq's dead-letter queues keep a message this long (milliseconds, seven days);
# notifier declares the same value so a quorum .XQ means what Dramatiq's classic one does.
DEAD_MESSAGE_TTL_MS = DEAD_MESSAGE_TTL
DEAD_LETTER_SUFFIX = ".XQ"


def node_urls(url: str) -> list[str]:
    """One single-node URL per node of ``url`` (``host1:port,host2:port`` in its netloc)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("a broker URL is scheme://[user:password@]host[:port][,host[:port]...]")
    end = len(rest)
    for mark in ("/", "?"):
        at = rest.find(mark)
        if at != -1:
            end = min(end, at)
    netloc, tail = rest[:end], rest[end:]
    userinfo, at_sign, hosts = netloc.rpartition("@")
    prefix = f"{scheme}://{userinfo}{at_sign}"
    nodes = [host.strip() for host in hosts.split(",")]
    if any(not node for node in nodes):
        raise ValueError("an empty host in the broker URL's list of nodes")
    return [prefix + node + tail for node in nodes]


def connection_parameters(url: str, **overrides: Any) -> pika.URLParameters:
    """Parameters for the first node of ``url`` (see :func:`node_parameters` for all)."""
    parameters = pika.URLParameters(node_urls(url)[0])
    parameters.heartbeat = overrides.get("heartbeat", 30)
    parameters.blocked_connection_timeout = overrides.get("blocked_connection_timeout", 60)
    parameters.connection_attempts = overrides.get("connection_attempts", 1)
    if "socket_timeout" in overrides:
        parameters.socket_timeout = overrides["socket_timeout"]
    return parameters


def node_parameters(
    url: str, *, shuffle: bool = True, **overrides: Any
) -> list[pika.URLParameters]:
    """Parameters for every node of ``url``, for ``pika.BlockingConnection`` (which tries
    them in order). ``shuffle``: start at a random node, so processes spread out."""
    nodes = [connection_parameters(node, **overrides) for node in node_urls(url)]
    if shuffle and len(nodes) > 1:
        start = random.randrange(len(nodes))  # spreads the load; not a secret
        nodes = nodes[start:] + nodes[:start]
    return nodes


def broker_user(url: str) -> str:
    """The user name an amqp:// URL connects as (what RabbitMQ validates user_id against)."""
    credentials = pika.URLParameters(node_urls(url)[0]).credentials
    return str(getattr(credentials, "username", "") or "")


def describe_nodes(url: str) -> str:
    """The nodes of ``url`` without credentials, for logs and messages."""
    return ",".join(
        f"{urlsplit(node).hostname}:{urlsplit(node).port or 5672}" for node in node_urls(url)
    )


@dataclass(frozen=True)
class QueuePolicy:
    """The arguments of notifier's queues, the same in every process.

    Classic (a development node) keeps exactly what Dramatiq declares, so an existing
    deployment's queues stay equivalent. Quorum queues are replicated and bound a poison
    message: after ``delivery_limit`` unsettled deliveries the broker dead-letters it
    (at-least-once, so it cannot vanish on the way) to the queue's ``.XQ``, where
    notifier's dead-letter recorder turns it into a rejected event or a failed delivery
    with its reason (notifier.pipeline.deadletters).
    """

    queue_type: Literal["quorum", "classic"] = "classic"
    delivery_limit: int = 20

    @classmethod
    def of(cls, settings: Settings) -> QueuePolicy:
        return cls(settings.queue_type, settings.broker.delivery_limit)

    @property
    def quorum(self) -> bool:
        return self.queue_type == "quorum"

    def work_queue_arguments(self, dead_letter_queue: str) -> dict[str, Any]:
        """A queue that consumers process (Dramatiq's queues and their ``.DQ``, the
        events queue): failed messages go to ``dead_letter_queue``."""
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue,
        }
        if self.quorum:
            arguments.update(
                {
                    "x-queue-type": "quorum",
                    "x-delivery-limit": self.delivery_limit,
                    # At-least-once dead-lettering (RabbitMQ 3.10+) requires
                    # reject-publish overflow; there is no length limit, so it never
                    # refuses a publish.
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            )
        return arguments

    def dead_letter_arguments(self) -> dict[str, Any]:
        """A ``.XQ``: Dramatiq's seven-day keep, replicated when quorum; no delivery
        limit and no dead-lettering of its own (nothing leaves it unseen)."""
        arguments: dict[str, Any] = {"x-message-ttl": DEAD_MESSAGE_TTL_MS}
        if self.quorum:
            arguments["x-queue-type"] = "quorum"
        return arguments

    def events_queue_arguments(self, events: EventsSettings) -> dict[str, Any] | None:
        """The inbound events queue: none when classic (as declared before quorum
        queues existed), else a work queue dead-lettering to ``<queue>.XQ``."""
        if not self.quorum:
            return None
        return self.work_queue_arguments(events.queue + DEAD_LETTER_SUFFIX)

    def events_dead_letter_arguments(self) -> dict[str, Any]:
        """The events queue's ``.XQ`` (quorum only): raw events wait there, with no
        expiry, until the recorder keeps them as rejected events."""
        return {"x-queue-type": "quorum"}


def declare_topology(
    channel: Any, events: EventsSettings, policy: QueuePolicy | None = None
) -> None:
    """Declare the events exchange and the inbound queue (idempotent).

    Publishers only need the exchange; the queue is the worker bridge's. Dramatiq's
    own queues are declared by Dramatiq (notifier.brokers), with the same policy.
    Without a policy: classic (a development node).
    """
    policy = policy or QueuePolicy()
    channel.exchange_declare(exchange=events.exchange, exchange_type="topic", durable=True)
    if policy.quorum:
        channel.queue_declare(
            queue=events.queue + DEAD_LETTER_SUFFIX,
            durable=True,
            arguments=policy.events_dead_letter_arguments(),
        )
    channel.queue_declare(
        queue=events.queue, durable=True, arguments=policy.events_queue_arguments(events)
    )
    channel.queue_bind(queue=events.queue, exchange=events.exchange, routing_key=events.routing_key)


def declare_callback_queue(channel: Any, exchange: str, callbacks: CallbackSettings) -> None:
    """Declare the status ``exchange`` (as the outbox relay declares it: topic, durable),
    the callbacks' queue bound to every key, and the queue where messages that are not
    status messages are dead-lettered (idempotent)."""
    invalid = f"{callbacks.queue}.invalid"
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue=invalid, durable=True)
    channel.queue_declare(
        queue=callbacks.queue,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": invalid},
    )
    channel.queue_bind(queue=callbacks.queue, exchange=exchange, routing_key="#")
