"""Dramatiq's RabbitMQ broker as notifier runs it: queues declared by the deployment's
:class:`~notifier.amqp.QueuePolicy` (quorum or classic), on any node of a cluster.

Dramatiq declares its own queues (``<queue>``, ``<queue>.DQ`` for delayed retries,
``<queue>.XQ`` for dead letters) lazily, in every process that enqueues or consumes.
Its declarations go through two methods that this subclass overrides, so the worker,
the API and the CLI declare them with the very arguments ``notifier broker
migrate-queues`` and the dead-letter recorder use: a mismatch would be a 406
PRECONDITION_FAILED on the first message.

Failover: the broker holds the parameters of every node (a random node first, so
processes spread). Dramatiq drops a connection that fails and opens a new one on the
next publish or consumer restart, and ``pika.BlockingConnection`` tries the nodes in
turn. With ``confirm_delivery`` a publish that was not confirmed raises and Dramatiq
publishes it again (up to six times): at least once, which ingest (by event id) and
the delivery claim (by delivery id) make safe.
"""

from __future__ import annotations

import random
from typing import Any

import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import xq_name

from notifier.amqp import QueuePolicy, node_urls


class NotifierRabbitmqBroker(RabbitmqBroker):
    """A :class:`RabbitmqBroker` with publisher confirms, every node of the URL and the
    policy's queue arguments."""

    def __init__(self, url: str, policy: QueuePolicy, **kwargs: Any) -> None:
        super().__init__(url=node_urls(url)[0], confirm_delivery=True, **kwargs)
        # Every node, a random one first; each parsed as Dramatiq parses a URL (the
        # heartbeat the server proposes), so one node behaves as it always did.
        nodes = [pika.URLParameters(node) for node in node_urls(url)]
        start = random.randrange(len(nodes))  # spreads the load; not a secret
        self.parameters = nodes[start:] + nodes[:start]
        self.policy = policy

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        # Dramatiq calls this for a queue and its .DQ, both dead-lettering to the .XQ.
        return self.policy.work_queue_arguments(xq_name(queue_name))

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name),
            durable=True,
            arguments=self.policy.dead_letter_arguments(),
        )
