"""The bridge's grouping on real RabbitMQ: a lone event goes at once while the process
is idle; while it is busy, events that come soon after join one group."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pika
import pytest

from notifier.amqp import QueuePolicy, declare_topology
from notifier.pipeline.bridge import EventBridge
from notifier.settings import EventsSettings
from tests.support import wait_until


class RecordingIngest:
    """Stands in for the ingest actor: keeps each group the bridge sends."""

    def __init__(self) -> None:
        self.groups: list[list[tuple[str, dict[str, Any]]]] = []
        self.lock = threading.Lock()

    def send(self, events: list[tuple[str, dict[str, Any]]], source: str) -> None:
        assert source == "amqp"
        with self.lock:
            self.groups.append(events)

    def sizes(self) -> list[int]:
        with self.lock:
            return [len(g) for g in self.groups]


class FakeWorker:
    """Dramatiq's worker as the bridge sees it: messages waiting for a thread."""

    def __init__(self) -> None:
        self.work_queue: queue.Queue[object] = queue.Queue()

    def busy(self, busy: bool) -> None:
        if busy:
            self.work_queue.put(object())
        else:
            while not self.work_queue.empty():
                self.work_queue.get_nowait()


@pytest.fixture
def events(queue_prefix: str) -> EventsSettings:
    return EventsSettings(
        exchange=f"{queue_prefix}.events",
        queue=f"{queue_prefix}.events.inbound",
        batch_wait_ms=2000,
    )


@pytest.fixture
def bridge(
    amqp_url: str, events: EventsSettings
) -> Iterator[tuple[EventBridge, RecordingIngest, FakeWorker]]:
    ingest, worker = RecordingIngest(), FakeWorker()
    bridge = EventBridge(amqp_url, events, cast(Any, ingest))
    bridge.after_worker_boot(cast(Any, None), cast(Any, worker))
    try:
        yield bridge, ingest, worker
    finally:
        bridge.before_worker_shutdown(cast(Any, None), cast(Any, worker))


@pytest.fixture
def publish(amqp_url: str, events: EventsSettings) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    declare_topology(channel, events)

    def publish_one() -> None:
        body = f'{{"event_id": "{uuid.uuid4()}"}}'.encode()
        channel.basic_publish(events.exchange, events.routing_key, body)

    yield publish_one
    connection.close()


def test_an_idle_process_forwards_each_lone_event_at_once(bridge: Any, publish: Any) -> None:
    _bridge, ingest, _worker = bridge
    for sent in range(1, 4):
        publish()
        # Well inside the 2 s a group may wait: it was not kept waiting.
        wait_until(lambda n=sent: len(ingest.sizes()) == n, timeout=1.0, interval=0.01)
    assert ingest.sizes() == [1, 1, 1]


def test_a_busy_process_lets_a_group_wait_for_the_events_that_follow(
    bridge: Any, publish: Any
) -> None:
    _bridge, ingest, worker = bridge
    worker.busy(True)
    for _ in range(5):
        publish()
        time.sleep(0.1)
    wait_until(lambda: ingest.sizes(), timeout=5.0)
    assert ingest.sizes() == [5]
    # Once the process is free again, a lone event does not wait.
    worker.busy(False)
    publish()
    wait_until(lambda: len(ingest.sizes()) == 2, timeout=1.0, interval=0.01)
    assert ingest.sizes() == [5, 1]


class FlakyIngest(RecordingIngest):
    """The ingest actor while its queue cannot take messages: the first sends fail."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, events: list[tuple[str, dict[str, Any]]], source: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the ingest queue is unavailable")
        super().send(events, source)


def test_events_the_bridge_cannot_hand_on_are_kept_not_given_back_to_a_quorum_queue(
    amqp_url: str, events: EventsSettings
) -> None:
    # A delivery limit of 2: were each failed enqueue a nack with requeue, the event
    # would be dead-lettered by the third.
    policy = QueuePolicy("quorum", 2)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    declare_topology(channel, events, policy)
    event_id = str(uuid.uuid4())
    channel.basic_publish(events.exchange, events.routing_key, f'{{"event_id": "{event_id}"}}')
    ingest, worker = FlakyIngest(failures=3), FakeWorker()
    bridge = EventBridge(amqp_url, events, cast(Any, ingest), policy)
    bridge.after_worker_boot(cast(Any, None), cast(Any, worker))
    try:
        wait_until(lambda: ingest.sizes() == [1], timeout=30)
    finally:
        bridge.before_worker_shutdown(cast(Any, None), cast(Any, worker))
    assert ingest.groups[0][0][0] == f'{{"event_id": "{event_id}"}}'
    dead = channel.queue_declare(events.queue + ".XQ", passive=True).method.message_count
    left = channel.queue_declare(events.queue, passive=True).method.message_count
    connection.close()
    assert (dead, left) == (0, 0)
