"""The Python publisher's confirm semantics on the real RabbitMQ: every event is
reported confirmed or failed, with pipelined confirms (publish_batch/publish_many)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from notifier.amqp import declare_topology
from notifier.ops.samples import sample_event
from notifier.publisher import EventPublisher
from notifier.settings import EventsSettings

pytestmark = pytest.mark.integration


def events_settings(prefix: str) -> EventsSettings:
    return EventsSettings(exchange=f"{prefix}.events", queue=f"{prefix}.events.inbound")


@pytest.fixture
def channel(amqp_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield connection.channel()
    finally:
        connection.close()


def queued_ids(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> list[str]:
    ids = []
    while True:
        method, _properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return ids
        ids.append(json.loads(body)["event_id"])


def test_every_event_confirmed_is_counted_and_queued(
    amqp_url: str, queue_prefix: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    settings = events_settings(queue_prefix)
    declare_topology(channel, settings)
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(3000)]
    with EventPublisher(amqp_url, settings) as publisher:
        # A small window forces many rounds of publish, confirm, publish more.
        report = publisher.publish_batch(iter(events), window=100)
        many = publisher.publish_many(events[:10])
    assert report.confirmed == len(events)
    assert report.failed == []
    assert many.confirmed == 10
    assert many.failed == []
    assert queued_ids(channel, settings.queue) == [e["event_id"] for e in events + events[:10]]


def test_unroutable_events_are_reported_failed_with_their_ids(
    amqp_url: str, queue_prefix: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    settings = events_settings(queue_prefix)
    # The exchange exists, no queue is bound: every event comes back unroutable.
    channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(50)]
    raw = '{"no": "event id"}'  # raw JSON without an id: labelled by its position
    with EventPublisher(amqp_url, settings) as publisher:
        report = publisher.publish_many([*events, raw])
    assert report.confirmed == 0
    expected = [(e["event_id"], "UnroutableError") for e in events] + [("#51", "UnroutableError")]
    assert sorted(report.failed) == sorted(expected)


def test_events_the_broker_refuses_are_reported_nacked(
    amqp_url: str, queue_prefix: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    settings = events_settings(queue_prefix)
    channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)
    # A full queue that refuses new messages: RabbitMQ nacks them.
    channel.queue_declare(
        settings.queue,
        durable=True,
        arguments={"x-max-length": 10, "x-overflow": "reject-publish"},
    )
    channel.queue_bind(settings.queue, settings.exchange, routing_key=settings.routing_key)
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(60)]
    with EventPublisher(amqp_url, settings) as publisher:
        report = publisher.publish_batch(events, window=7)
    assert report.confirmed == 10
    assert len(report.failed) == 50
    assert {why for _id, why in report.failed} == {"NackError"}
    confirmed = set(queued_ids(channel, settings.queue))
    assert len(confirmed) == 10
    assert confirmed.isdisjoint(event_id for event_id, _why in report.failed)


class Proxy:
    """A TCP proxy to RabbitMQ that can hang up on both sides (a lost connection)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def __enter__(self) -> Proxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.hang_up()

    def hang_up(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                with self.lock:
                    self.sockets += [client, server]
                for source, sink in ((client, server), (server, client)):
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)


def test_connection_lost_mid_batch_reports_the_unconfirmed_failed(
    amqp_url: str, queue_prefix: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    settings = events_settings(queue_prefix)
    declare_topology(channel, settings)
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(5000)]
    parts = urlsplit(amqp_url)
    window, cut_at = 1000, 2500

    with Proxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as proxy:

        def cut_midway() -> Iterator[dict[str, object]]:
            for index, event in enumerate(events):
                if index == cut_at:
                    # At most `window` are unconfirmed now: the first 1500 are settled.
                    proxy.hang_up()
                yield event

        with EventPublisher(amqp_url, settings) as publisher:
            publisher.broker_url = urlunsplit(
                parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}")
            )  # only the batch goes through the proxy
            report = publisher.publish_batch(cut_midway(), window=window, timeout_s=10)

    failed = {event_id for event_id, _why in report.failed}
    assert report.confirmed + len(report.failed) == len(events)
    assert cut_at - window <= report.confirmed <= cut_at
    assert all(why.startswith(("not confirmed:", "not published:")) for _, why in report.failed)
    assert {e["event_id"] for e in events[cut_at:]} <= failed
    # Whatever was reported confirmed really is queued; the rest may or may not be.
    queued = set(queued_ids(channel, settings.queue))
    confirmed = {e["event_id"] for e in events} - failed
    assert len(confirmed) == report.confirmed
    assert confirmed <= queued


def test_a_broker_that_cannot_be_reached_raises(amqp_url: str, queue_prefix: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    with EventPublisher(amqp_url, events_settings(queue_prefix)) as publisher:
        publisher.broker_url = f"amqp://guest:guest@127.0.0.1:{port}/"  # nobody listens
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            publisher.publish_batch([sample_event(1)])


def test_an_iterable_that_fails_raises_after_the_events_before_it_are_settled(
    amqp_url: str, queue_prefix: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    settings = events_settings(queue_prefix)
    declare_topology(channel, settings)
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(300)]

    def failing() -> Iterator[dict[str, object]]:
        yield from events
        raise RuntimeError("the source of events broke")

    with EventPublisher(amqp_url, settings) as publisher, pytest.raises(RuntimeError):
        publisher.publish_batch(failing())
    assert queued_ids(channel, settings.queue) == [e["event_id"] for e in events]


def test_a_batch_goes_on_from_another_node_when_its_node_is_lost_and_every_event_is_queued(
    amqp_url: str, queue_prefix: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    settings = events_settings(queue_prefix)
    declare_topology(channel, settings)
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(4000)]
    parts = urlsplit(amqp_url)
    target = (parts.hostname or "127.0.0.1", parts.port or 5672)
    window, cut_at = 500, 2000

    # Two "nodes" (proxies to the one broker): the batch's node is lost mid-batch.
    with Proxy(target) as first, Proxy(target) as second:

        def cut_midway() -> Iterator[dict[str, object]]:
            for index, event in enumerate(events):
                if index == cut_at:
                    for node in (first, second):
                        if node.sockets:
                            node.listener.close()  # down for good
                            node.hang_up()
                yield event

        with EventPublisher(amqp_url, settings) as publisher:
            publisher.broker_url = urlunsplit(
                parts._replace(netloc=f"guest:guest@127.0.0.1:{first.port},127.0.0.1:{second.port}")
            )
            report = publisher.publish_batch(cut_midway(), window=window, timeout_s=10)

    assert report.failed == []
    assert report.confirmed == len(events)
    assert report.failovers == 1
    queued = Counter(queued_ids(channel, settings.queue))
    assert set(queued) == {e["event_id"] for e in events}
    # Only events unconfirmed when the node was lost may be there twice.
    assert sum(n - 1 for n in queued.values()) <= window


def test_a_lone_publish_whose_connection_was_lost_is_published_on_a_new_one(
    amqp_url: str, queue_prefix: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    settings = events_settings(queue_prefix)
    declare_topology(channel, settings)
    parts = urlsplit(amqp_url)
    with Proxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as proxy:
        proxied = urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}"))
        with EventPublisher(proxied, settings) as publisher:
            first, second = (sample_event(i, event_id=uuid.uuid4()) for i in (1, 2))
            publisher.publish(first)
            proxy.hang_up()  # the publisher's connection is gone; it does not know yet
            publisher.publish(second)
    assert queued_ids(channel, settings.queue) == [first["event_id"], second["event_id"]]
