"""`notifier broker migrate-queues` on the real RabbitMQ (a vhost of this session): an
existing classic deployment, with messages in every kind of queue and a TTHC system
still publishing, becomes quorum with every message still there, once."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pika
import pytest
from click.testing import CliRunner

from notifier.amqp import QueuePolicy, declare_topology
from notifier.app import Notifier
from notifier.cli.main import main
from notifier.ops.queuemigration import deployment_queues
from notifier.ops.samples import sample_event
from notifier.pipeline.bridge import submitter_of
from notifier.publisher import EventPublisher
from notifier.settings import Settings
from notifier.store.publishers import Submitter, SubmitterKind
from tests.support import notifier_env, rabbit_settings

pytestmark = pytest.mark.integration


def vhost_of(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path.lstrip("/"))


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    ).stdout


def queue_types(amqp_url: str, prefix: str) -> dict[str, str]:
    out = rabbitmqctl("list_queues", "-p", vhost_of(amqp_url), "name", "type", "--no-table-headers")
    found = dict(line.split("\t")[:2] for line in out.splitlines() if line.strip())
    return {n: t for n, t in found.items() if n.startswith(prefix + ".")}


@pytest.fixture
def tthc_user(amqp_url: str, queue_prefix: str) -> Iterator[tuple[str, str]]:
    """A TTHC system's own broker user (a different user_id from notifier's)."""
    name, password = f"tthc-{queue_prefix}", secrets.token_urlsafe(16)
    rabbitmqctl("add_user", name, password)
    rabbitmqctl("set_permissions", "-p", vhost_of(amqp_url), name, "^$", ".*", "^$")
    try:
        yield name, password
    finally:
        rabbitmqctl("delete_user", name)


def drain(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str
) -> list[tuple[bytes, pika.BasicProperties]]:
    found = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return found
        found.append((body, properties))


def classic_deployment(amqp_url: str, pg_url: str, prefix: str) -> Notifier:
    app = Notifier(rabbit_settings(amqp_url, pg_url, prefix, broker={"queue_type": "classic"}))
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    declare_topology(connection.channel(), app.settings.events, QueuePolicy.of(app.settings))
    connection.close()
    return app


def migrate(settings: Settings, queue_type: str = "quorum") -> tuple[int, str]:
    env = notifier_env(settings, NOTIFIER_BROKER__QUEUE_TYPE=queue_type)
    result = CliRunner().invoke(main, ["broker", "migrate-queues", "--yes"], env=env)
    return result.exit_code, result.output


def test_a_classic_deployment_with_messages_in_flight_becomes_quorum_with_nothing_lost(
    amqp_url: str, pg_url: str, queue_prefix: str, tthc_user: tuple[str, str]
) -> None:
    app = classic_deployment(amqp_url, pg_url, queue_prefix)
    events = app.settings.events
    channel_name = next(iter(app.deliver_actors))
    queue = app.deliver_actors[channel_name].queue_name
    # Messages in every kind of queue: raw events (one from a TTHC system's own user),
    # deliveries ready and delayed, an ingest group, a dead letter.
    before = [sample_event(i, event_id=uuid.uuid4()) for i in range(40)]
    with EventPublisher(amqp_url, events) as publisher:
        assert publisher.publish_many(before).failed == []
    user, password = tthc_user
    tthc_url = amqp_url.replace("guest:guest", f"{user}:{password}")
    foreign = sample_event(99, event_id=uuid.uuid4())
    with EventPublisher(tthc_url, events) as publisher:
        publisher.publish(foreign)
    ready = [uuid.uuid4() for _ in range(25)]
    delayed = [uuid.uuid4() for _ in range(7)]
    app.enqueue_deliveries((d, channel_name) for d in ready)
    app.enqueue_deliveries(((d, channel_name) for d in delayed), delay_ms=600_000)
    app.ingest_actor.send([["{}", {"size": 2}]], "amqp")
    admin = pika.BlockingConnection(pika.URLParameters(amqp_url))
    admin.channel().basic_publish("", queue + ".XQ", b'{"a dead": "letter"}')
    admin.close()
    app.close()
    assert set(queue_types(amqp_url, queue_prefix).values()) == {"classic"}

    # A TTHC system goes on publishing while the queues move.
    during: list[dict[str, object]] = []
    stop = threading.Event()

    def keep_publishing() -> None:
        with EventPublisher(amqp_url, events) as publisher:
            while not stop.is_set():
                event = sample_event(len(during), event_id=uuid.uuid4())
                publisher.publish(event)  # raises if not confirmed: the test fails
                during.append(event)

    publishing = threading.Thread(target=keep_publishing)
    publishing.start()
    try:
        code, output = migrate(app.settings)
    finally:
        stop.set()
        publishing.join(timeout=30)
    assert code == 0, output
    assert "none lost" in output

    types = queue_types(amqp_url, queue_prefix)
    assert set(types.values()) == {"quorum"}
    assert not [name for name in types if name.endswith(".migrating")]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    raw = drain(channel, events.queue)
    ids = Counter(json.loads(body)["event_id"] for body, _ in raw)
    expected = [e["event_id"] for e in [*before, foreign, *during]]
    assert len(during) > 0
    assert set(ids) == {str(i) for i in expected}  # every event
    # Twice only if published in the instant both the new queue and the temporary one
    # were bound (ingest drops the copy by event id); never one that waited in a queue.
    twice = {i for i, n in ids.items() if n > 1}
    assert twice <= {str(e["event_id"]) for e in during}
    assert max(ids.values()) <= 2
    (foreign_props,) = [p for b, p in raw if json.loads(b)["event_id"] == str(foreign["event_id"])]
    # Re-published by notifier's user, naming the TTHC user: the same submitter.
    assert submitter_of(foreign_props, frozenset({"guest"})) == Submitter(
        SubmitterKind.BROKER_USER, user
    )
    moved_ready = [json.loads(b)["args"][0] for b, _ in drain(channel, queue)]
    moved_delayed = [json.loads(b)["args"][0] for b, _ in drain(channel, queue + ".DQ")]
    assert sorted(i for group in moved_ready for i in group) == sorted(map(str, ready))
    assert sorted(i for group in moved_delayed for i in group) == sorted(map(str, delayed))
    assert len(drain(channel, app.ingest_actor.queue_name)) == 1
    assert [b for b, _ in drain(channel, queue + ".XQ")] == [b'{"a dead": "letter"}']
    connection.close()

    # The quorum deployment declares the very same queues: no 406 on its first message.
    quorum = Notifier(
        rabbit_settings(amqp_url, pg_url, queue_prefix, broker={"queue_type": "quorum"})
    )
    try:
        quorum.enqueue_deliveries([(uuid.uuid4(), channel_name)])
    finally:
        quorum.close()
    # Run again: everything is already right, nothing moves.
    code, output = migrate(app.settings)
    assert code == 0, output
    assert "0 message(s) moved" in output


def test_a_worker_set_to_quorum_on_classic_queues_stops_at_once_saying_how_to_migrate(
    amqp_url: str, pg_url: str, queue_prefix: str
) -> None:
    app = classic_deployment(amqp_url, pg_url, queue_prefix)
    app.enqueue_deliveries([(uuid.uuid4(), next(iter(app.deliver_actors)))])  # declares them
    app.close()
    env = notifier_env(app.settings, NOTIFIER_BROKER__QUEUE_TYPE="quorum")
    for command in (["worker"], ["api"]):
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code == 1, result.output
        assert "notifier broker migrate-queues" in result.output
        assert "other arguments" in result.output


def test_the_migration_refuses_a_queue_that_a_worker_still_consumes_and_changes_nothing(
    amqp_url: str, pg_url: str, queue_prefix: str
) -> None:
    app = classic_deployment(amqp_url, pg_url, queue_prefix)
    events = app.settings.events
    app.close()
    with EventPublisher(amqp_url, events) as publisher:
        publisher.publish(sample_event(1, event_id=uuid.uuid4()))
    consumer = pika.BlockingConnection(pika.URLParameters(amqp_url))
    consumer.channel().basic_consume(events.queue, lambda *args: None)
    try:
        code, output = migrate(app.settings)
    finally:
        consumer.close()
    assert code != 0
    assert "consumer" in output
    assert "stop the workers" in output
    assert queue_types(amqp_url, queue_prefix)[events.queue] == "classic"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    assert len(drain(connection.channel(), events.queue)) == 1
    connection.close()


def test_every_queue_of_the_deployment_is_listed_with_dead_letter_queues_before_their_users() -> (
    None
):
    from notifier.settings import EventsSettings

    specs = deployment_queues(EventsSettings(), ["n.ingest"], QueuePolicy("quorum", 5))
    names = [s.name for s in specs]
    assert names == [
        "notifier.events.inbound.XQ",
        "notifier.events.inbound",
        "n.ingest.XQ",
        "n.ingest",
        "n.ingest.DQ",
    ]
    assert specs[3].arguments is not None
    assert specs[3].arguments["x-delivery-limit"] == 5
