"""What the dead-letter recorder records for each kind of dead letter (SQLite; the
broker's side is tests/integration/test_quorum_queues.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa

from notifier.amqp import QueuePolicy
from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.pipeline.deadletters import DeadLetters
from notifier.pipeline.received import ingest_arguments
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus, DispatchMark
from notifier.store.migrate import upgrade
from notifier.store.publishers import Submitter, SubmitterKind
from notifier.store.schema import deliveries, rejected_events, status_outbox
from tests.support import make_settings

LIMIT_DEATH = {"x-death": [{"reason": b"delivery_limit", "queue": b"n.email", "count": 1}]}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Notifier]:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    database = Database(url)
    upgrade(database)
    database.dispose()
    app = Notifier(make_settings(database_url=url))
    yield app
    app.close()


def dead_letters(app: Notifier) -> DeadLetters:
    return DeadLetters(
        ingest=app.ingest,
        deliveries=app.deliveries,
        ingest_actor=app.ingest_actor,
        deliver_actors=app.deliver_actors,
        policy=QueuePolicy("quorum", 3),
    )


def message(actor: dramatiq.Actor[..., Any], *args: Any) -> bytes:
    return actor.message(*args).encode()


def planned(app: Notifier) -> tuple[uuid.UUID, dramatiq.Actor[..., Any]]:
    """A planned delivery and the actor of its channel."""
    result = app.ingest.handle(json.dumps(sample_event(3, event_id=uuid.uuid4())), source="t")
    delivery_id, channel = result.to_enqueue[0]
    return delivery_id, app.deliver_actors[channel]


def row(app: Notifier, delivery_id: uuid.UUID) -> Any:
    with app.database.engine.connect() as connection:
        return connection.execute(
            sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)
        ).one()


def test_a_poison_delivery_never_called_becomes_an_exhausted_dead_letter_with_the_reason(
    app: Notifier,
) -> None:
    delivery_id, actor = planned(app)
    body = message(actor, [str(delivery_id)])
    assert dead_letters(app).dramatiq_message(body, LIMIT_DEATH) == "1 delivery dead-lettered"
    found = row(app, delivery_id)
    assert found.status == DeliveryStatus.PERMANENT_FAILURE.value
    assert found.exhausted is True
    assert "delivery limit (3 deliveries)" in found.last_error
    # A dead letter is a final status: the publisher hears of it on the status stream.
    with app.database.engine.connect() as connection:
        announced = [
            body["type"]
            for body in connection.execute(sa.select(status_outbox.c.body)).scalars()
            if body["delivery"] is not None and body["delivery"]["id"] == str(delivery_id)
        ]
    assert announced == ["delivery.permanent-failure"]


def test_a_poison_delivery_whose_call_may_have_gone_out_is_held_as_unknown_not_failed(
    app: Notifier,
) -> None:
    delivery_id, actor = planned(app)
    (claimed,) = app.deliveries.claim([delivery_id], timedelta(minutes=5)).claimed
    app.deliveries.mark_dispatched([DispatchMark(delivery_id, "a-provider", claimed.attempt)])
    body = message(actor, [str(delivery_id)])
    dead_letters(app).dramatiq_message(body, LIMIT_DEATH)
    found = row(app, delivery_id)
    assert found.status == DeliveryStatus.UNKNOWN.value
    assert found.exhausted is False


def test_a_delivery_already_sent_is_left_as_it_is(app: Notifier) -> None:
    delivery_id, actor = planned(app)
    with app.database.begin() as connection:
        connection.execute(
            sa.update(deliveries)
            .where(deliveries.c.delivery_id == delivery_id)
            .values(status=DeliveryStatus.SENT.value)
        )
    body = message(actor, [str(delivery_id)])
    assert dead_letters(app).dramatiq_message(body, LIMIT_DEATH) == "0 delivery dead-lettered"
    assert row(app, delivery_id).status == DeliveryStatus.SENT.value


def test_an_ingest_whose_retries_ran_out_becomes_a_reject_with_its_last_error_and_submitter(
    app: Notifier,
) -> None:
    event = sample_event(4, event_id=uuid.uuid4())
    submitter = Submitter(SubmitterKind.BROKER_USER, "tthc-hcm")
    item = ingest_arguments(json.dumps(event).encode(), 65536, submitter)
    msg = app.ingest_actor.message([item], "amqp").copy(
        options={"retries": 8, "traceback": "Traceback ...\nOperationalError: server closed"}
    )
    rejected = {"x-death": [{"reason": b"rejected", "queue": b"n.ingest", "count": 1}]}
    done = dead_letters(app).dramatiq_message(msg.encode(), rejected)
    assert done == "kept as a rejected event"
    with app.database.engine.connect() as connection:
        reject = connection.execute(sa.select(rejected_events)).one()
    assert reject.reason == "gave up after 8 retries: OperationalError: server closed"
    assert reject.event_id == str(event["event_id"])
    assert reject.source == "dead-letter"
    assert (reject.submitter_kind, reject.submitter_name) == ("broker-user", "tthc-hcm")
    # The same dead letter again (redelivered before its ack): the event is not
    # recorded, so it is kept again; once ingested, it is left alone.
    app.ingest.handle(json.dumps(event), source="t")
    assert dead_letters(app).dramatiq_message(msg.encode(), rejected) == "already recorded"
