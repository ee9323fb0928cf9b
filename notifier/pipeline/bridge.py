"""The bridge from the public events queue (plain JSON) to the ingest actor.

TTHC systems publish plain JSON, not Dramatiq envelopes, so each worker process runs
one consumer of the inbound queue. Raw events travel to ingest in groups: one ingest
message and one confirm per group, and later one message per channel, one claim and
one record for each. Events that are already waiting join the group. While the
worker process is busy (messages wait for a thread), the group also waits for more,
up to ``events.batch_size`` events or ``events.batch_wait_ms``: a group costs the same
whatever its size, so this is what lets a busy process catch up. An idle one sends a
lone event at once. A group's raw messages are acked only after its
ingest message is confirmed by RabbitMQ, so a crash in between redelivers them
(ingest drops the duplicates).
"""

from __future__ import annotations

import json
import time
from typing import Any

import dramatiq
import pika

from notifier.amqp import QueuePolicy, broker_user, declare_topology, node_parameters
from notifier.background import ConsumerThread
from notifier.logging import get_logger
from notifier.pipeline.received import ingest_arguments
from notifier.publisher import PUBLISHED_AT_HEADER
from notifier.settings import EventsSettings
from notifier.store.publishers import SUBMITTER_HEADER, Submitter, SubmitterKind

__all__ = ["EventBridge", "ingest_arguments", "submitter_of"]

log = get_logger(__name__)


class EventBridge(ConsumerThread):
    """Dramatiq middleware: runs the inbound consumer thread inside each worker process."""

    thread_name = "notifier-bridge"

    def __init__(
        self,
        broker_url: str,
        events: EventsSettings,
        ingest_actor: dramatiq.Actor[..., Any],
        policy: QueuePolicy | None = None,
    ):
        super().__init__()
        self.broker_url = broker_url
        self.events = events
        self.policy = policy or QueuePolicy()
        self.ingest_actor = ingest_actor
        # notifier's own broker users: this process's, and e.g. the API's if it differs.
        self._us = frozenset({broker_user(broker_url), *events.service_users})
        self._worker: dramatiq.Worker | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._worker = worker
        super().after_worker_boot(broker, worker)

    def _busy(self) -> bool:
        """Whether messages of this process wait for a free worker thread."""
        # Dramatiq's worker keeps the messages its consumers fetched, ready for its
        # threads, in ``work_queue``.
        work_queue = getattr(self._worker, "work_queue", None)
        return work_queue is not None and work_queue.qsize() > 0

    def consume(self) -> None:
        # Any live node of the cluster; after a node dies, run() lands here again.
        connection = pika.BlockingConnection(node_parameters(self.broker_url))
        try:
            channel = connection.channel()
            declare_topology(channel, self.events, self.policy)
            channel.basic_qos(prefetch_count=self.events.prefetch)
            group: list[tuple[int, bytes, Submitter, int | None]] = []

            def collect(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
                group.append(
                    (
                        method.delivery_tag,
                        body,
                        submitter_of(properties, self._us),
                        published_at_ms_of(properties),
                    )
                )

            channel.basic_consume(self.events.queue, on_message_callback=collect)
            log.info("bridge consuming", queue=self.events.queue)
            size, linger_s = self.events.batch_size, self.events.batch_wait_ms / 1000
            while not self.stopping.is_set():
                # Until something arrives; wake each second to see if the worker stops.
                connection.process_data_events(time_limit=1.0)
                # Those already here join. While the process is busy, the group waits
                # for more (to its size or the linger time), looking again every 10 ms.
                connection.process_data_events(time_limit=0)
                deadline = time.monotonic() + linger_s
                while group and len(group) < size and self._busy():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    connection.process_data_events(time_limit=min(left, 0.01))
                while group:
                    self._forward(channel, group[:size])
                    del group[:size]
            # Unacked prefetched messages go back to the queue when the channel closes.
            channel.close()
        finally:
            if connection.is_open:
                connection.close()

    def _forward(self, channel: Any, group: list[tuple[int, bytes, Submitter, int | None]]) -> None:
        last_tag = group[-1][0]
        events = [
            ingest_arguments(body, self.events.max_bytes, submitter, published_at_ms)
            for _tag, body, submitter, published_at_ms in group
        ]
        delay = 1.0
        while True:
            try:
                self.ingest_actor.send(events, "amqp")
                break
            except Exception:
                if self.stopping.is_set():
                    # Not enqueued, and stopping: give the raw messages back.
                    channel.basic_nack(last_tag, multiple=True, requeue=True)
                    log.exception("could not enqueue events; requeued", count=len(group))
                    return
                # Keep them and try again: a message given back counts as a delivery
                # against a quorum queue's delivery limit, and an outage of the ingest
                # queue must not turn good events into dead letters. Sleeping on the
                # connection keeps its heartbeats going.
                log.exception("could not enqueue events; trying again", count=len(group))
                channel.connection.sleep(delay)
                delay = min(delay * 2, 15.0)
        channel.basic_ack(last_tag, multiple=True)


def published_at_ms_of(properties: Any) -> int | None:
    """When a message was published (Unix ms): our publishers' header, else the AMQP
    ``timestamp`` property (seconds) some publishers set; None when neither says."""
    headers = getattr(properties, "headers", None) or {}
    stamped = headers.get(PUBLISHED_AT_HEADER)
    if isinstance(stamped, int) and not isinstance(stamped, bool) and stamped > 0:
        return stamped
    seconds = getattr(properties, "timestamp", None)
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        return seconds * 1000
    return None


def submitter_of(properties: Any, service_users: frozenset[str]) -> Submitter:
    """Who published a message, from RabbitMQ's validated ``user_id`` property.

    RabbitMQ refuses a message whose ``user_id`` is not the publishing connection's
    user, so a present ``user_id`` is who published it. Only notifier's own users may
    name another submitter (the API key that posted it, in :data:`SUBMITTER_HEADER`).
    """
    user_id = getattr(properties, "user_id", None)
    if not user_id:
        return Submitter(SubmitterKind.UNIDENTIFIED, "-")
    if user_id not in service_users:
        return Submitter(SubmitterKind.BROKER_USER, str(user_id)[:100])
    headers = getattr(properties, "headers", None) or {}
    named = headers.get(SUBMITTER_HEADER)
    if named:
        try:
            text = named.decode() if isinstance(named, bytes) else str(named)
            return Submitter.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable submitter header from notifier's own user; ignored")
    return Submitter.service(str(user_id)[:100])
