"""Quorum queues on the real RabbitMQ (a vhost of this session): every process declares
notifier's queues with the same arguments, and a poison message is bounded by the
queue's delivery limit and ends in notifier's dead letters with its reason.

A poison message is one that kills its consumer every time. Here the consumer that
dies is a real AMQP consumer that takes the message and drops its connection without
settling it, which is what RabbitMQ sees when a worker process is killed mid-message.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from notifier_simulators.local import LocalProviders

from notifier.amqp import QueuePolicy, declare_topology
from notifier.app import Notifier
from notifier.cli.main import main
from notifier.ops.samples import sample_event
from notifier.pipeline.received import ingest_arguments
from notifier.publisher import EventPublisher
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.schema import deliveries, rejected_events
from tests.support import RunningWorker, notifier_env, rabbit_settings, wait_until

pytestmark = pytest.mark.integration

LIMIT = 2  # the smallest delivery limit notifier accepts: quick to exhaust


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as local:
        yield local


def quorum_app(amqp_url: str, pg_url: str, prefix: str, providers: LocalProviders) -> Notifier:
    settings = rabbit_settings(
        amqp_url,
        pg_url,
        prefix,
        broker={"queue_type": "quorum", "delivery_limit": LIMIT},
        **providers.settings_overrides(),
    )
    app = Notifier(settings)
    providers.seed_tokens(app.tokens)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    declare_topology(connection.channel(), app.settings.events, QueuePolicy.of(app.settings))
    connection.close()
    return app


def queue_types(amqp_url: str, prefix: str) -> dict[str, str]:
    vhost = unquote(urlsplit(amqp_url).path.lstrip("/"))
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = dict(line.split("\t")[:2] for line in out.splitlines() if line.strip())
    return {name: kind for name, kind in found.items() if name.startswith(prefix + ".")}


def crash_until_dead_lettered(amqp_url: str, queue: str, dead_letter_queue: str) -> int:
    """Take the message and die without settling it, as a worker a poison message kills,
    until RabbitMQ moves it to ``dead_letter_queue``; returns how many times."""
    crashes = 0
    while True:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        taken = wait_until(
            lambda channel=channel: (
                channel.basic_get(queue)[0] is not None
                or channel.queue_declare(dead_letter_queue, passive=True).method.message_count
            ),
            timeout=10,
        )
        dead = channel.queue_declare(dead_letter_queue, passive=True).method.message_count
        connection.close()  # the message (if taken) goes back unsettled: one more delivery
        if dead:
            return crashes
        assert taken
        crashes += 1
        assert crashes <= LIMIT + 2, "the delivery limit did not stop the redeliveries"


def test_the_worker_the_api_the_bridge_and_broker_setup_declare_the_same_quorum_queues(
    amqp_url: str, pg_url: str, queue_prefix: str, providers: LocalProviders
) -> None:
    worker_app = quorum_app(amqp_url, pg_url, queue_prefix, providers)
    api_app = quorum_app(amqp_url, pg_url, queue_prefix, providers)  # another process's view
    try:
        with RunningWorker(worker_app):
            # The worker declared every queue as it started consuming; the API declares
            # them again on its first enqueue, and the bridge the events topology: a
            # different argument anywhere would be a 406 here.
            api_app.enqueue_deliveries([(uuid.uuid4(), "email")])
            setup = CliRunner().invoke(
                main,
                ["broker", "setup"],
                env=notifier_env(
                    api_app.settings,
                    NOTIFIER_BROKER__QUEUE_TYPE="quorum",
                    NOTIFIER_BROKER__DELIVERY_LIMIT=str(LIMIT),
                ),
            )
            assert setup.exit_code == 0, setup.output
            with EventPublisher(amqp_url, api_app.settings.events) as publisher:
                publisher.publish(sample_event(1, event_id=uuid.uuid4()))
            types = wait_until(
                lambda: (
                    len(queue_types(amqp_url, queue_prefix)) >= 17
                    and queue_types(amqp_url, queue_prefix)
                )
            )
    finally:
        api_app.close()
    channels = ["ingest", "email", "sms", "zalo", "portal"]
    expected = {f"{queue_prefix}.{c}{s}" for c in channels for s in ("", ".DQ", ".XQ")}
    expected |= {f"{queue_prefix}.events.inbound", f"{queue_prefix}.events.inbound.XQ"}
    assert expected <= set(types)
    assert {types[name] for name in expected} == {"quorum"}


def test_a_poison_delivery_is_dead_lettered_after_the_delivery_limit_and_kept_with_its_reason(
    amqp_url: str, pg_url: str, queue_prefix: str, providers: LocalProviders
) -> None:
    app = quorum_app(amqp_url, pg_url, queue_prefix, providers)
    result = app.ingest.handle(json.dumps(sample_event(3, event_id=uuid.uuid4())), source="test")
    delivery_id, channel = result.to_enqueue[0]
    app.enqueue_deliveries([(delivery_id, channel)])
    queue = app.deliver_actors[channel].queue_name

    crashes = crash_until_dead_lettered(amqp_url, queue, queue + ".XQ")

    assert LIMIT <= crashes <= LIMIT + 1
    with RunningWorker(app):
        row = wait_until(lambda: _delivery(app, delivery_id, DeliveryStatus.PERMANENT_FAILURE))
    assert row.exhausted is True
    assert "delivery limit (2 deliveries)" in row.last_error
    assert queue in row.last_error


def test_a_poison_event_on_the_events_queue_becomes_a_rejected_event_with_its_reason(
    amqp_url: str, pg_url: str, queue_prefix: str, providers: LocalProviders
) -> None:
    app = quorum_app(amqp_url, pg_url, queue_prefix, providers)
    event = sample_event(4, event_id=uuid.uuid4())
    with EventPublisher(amqp_url, app.settings.events) as publisher:
        publisher.publish(event)
    queue = app.settings.events.queue

    crash_until_dead_lettered(amqp_url, queue, queue + ".XQ")

    with RunningWorker(app):
        reject = wait_until(lambda: _reject(app, str(event["event_id"])))
    assert "delivery limit" in reject.reason
    assert reject.source == "dead-letter"
    assert json.loads(reject.payload_raw)["event_id"] == str(event["event_id"])
    assert reject.submitter_name == "guest"  # who published it, for a replay's check
    assert app.ingest.known([uuid.UUID(str(event["event_id"]))]) == set()


def test_a_dead_lettered_group_of_events_is_split_so_each_good_event_is_still_ingested(
    amqp_url: str, pg_url: str, queue_prefix: str, providers: LocalProviders
) -> None:
    app = quorum_app(amqp_url, pg_url, queue_prefix, providers)
    group = [sample_event(i, event_id=uuid.uuid4()) for i in (5, 6)]
    app.ingest_actor.send(
        [ingest_arguments(json.dumps(e).encode(), app.settings.events.max_bytes) for e in group],
        "amqp",
    )
    queue = app.ingest_actor.queue_name

    crash_until_dead_lettered(amqp_url, queue, queue + ".XQ")

    ids = {uuid.UUID(str(e["event_id"])) for e in group}
    with RunningWorker(app):
        wait_until(lambda: app.ingest.known(list(ids)) == ids)
    assert all(_reject(app, str(event_id)) is None for event_id in ids)


def _delivery(app: Notifier, delivery_id: uuid.UUID, status: DeliveryStatus) -> Any:
    with app.database.engine.connect() as connection:
        row = connection.execute(
            sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)
        ).one()
    return row if row.status == status.value else None


def _reject(app: Notifier, event_id: str) -> Any:
    with app.database.engine.connect() as connection:
        return connection.execute(
            sa.select(rejected_events).where(rejected_events.c.event_id == event_id)
        ).first()
