"""The record of status changes (issue 17, item 2): every announced change gets its outbox
row in the transaction that makes it, through the store's transitions; a change that
rolls back leaves none. The pipeline runs on the in-process broker with scripted
adapters (tests/test_pipeline.py); the transitions run on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from notifier.app import Notifier
from notifier.ops.replay import Replayer, ReplayOutcome, Resolution
from notifier.ops.retention import Retention
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.counters import MetricCounters
from notifier.store.deliveries.lifecycle import ANNOUNCED, DeliveryStatus, set_status
from notifier.store.schema import deliveries, events, rejected_events, status_outbox
from notifier.store.statuses import StatusOutbox
from tests.support import RunningWorker, make_settings, wait_until
from tests.test_pipeline import MailA, MailB, build_app, rows, settled, submit


def outbox(database: Database) -> list[dict[str, Any]]:
    """The outbox rows as messages (what the relay will publish), in order."""
    o = status_outbox.c
    with database.engine.connect() as connection:
        found = connection.execute(
            sa.select(o.sequence, o.change_id, o.type, o.agency_code, o.body).order_by(o.sequence)
        ).all()
    return [{**row.body, "id": str(row.change_id), "sequence": row.sequence} for row in found]


def types_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


@pytest.fixture
def app(tmp_path: Path) -> Notifier:
    return build_app(tmp_path)


def test_a_failed_email_and_its_sms_fallback_are_announced_once_each_in_order(
    app: Notifier,
) -> None:
    MailA.script = ["perm"]
    event = sample_event(4, event_id=uuid.uuid4())
    with RunningWorker(app):
        submit(app, event)
        wait_until(lambda: settled(app, 2))
    email, sms = rows(app)
    messages = outbox(app.database)
    assert types_of(messages) == [
        "event.accepted",
        "delivery.permanent-failure",
        "delivery.sent",
    ]
    accepted, failed, sent = messages
    assert accepted["event_id"] == event["event_id"]
    assert accepted["agency"] == event["agency"]["code"]
    assert accepted["dossier_code"] == event["dossier"]["code"]
    assert accepted["delivery"] is None
    assert accepted["rejection"] is None
    assert failed["delivery"]["id"] == str(email["delivery_id"])
    assert failed["delivery"]["channel"] == "email"
    assert failed["delivery"]["provider"] == "mail_a"
    assert failed["delivery"]["attempts"] == 1
    assert failed["delivery"]["recipient"] == email["recipient_masked"]
    assert email["recipient"] not in json.dumps(messages)  # masked only, never in clear
    assert sent["delivery"]["fallback_of"] == str(email["delivery_id"])
    assert sent["delivery"]["id"] == str(sms["delivery_id"])
    assert sent["delivery"]["status"] == "sent"
    assert len({m["id"] for m in messages}) == 3
    assert [m["sequence"] for m in messages] == sorted(m["sequence"] for m in messages)


def test_retries_are_not_announced_only_the_final_status_is(app: Notifier) -> None:
    MailA.script = ["temp", "temp"]
    MailB.script = ["temp", "temp"]
    with RunningWorker(app):
        submit(app, sample_event(1, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 1))
    assert types_of(outbox(app.database)) == ["event.accepted", "delivery.sent"]
    assert outbox(app.database)[1]["delivery"]["attempts"] == 3


def test_a_duplicate_is_counted_and_announced_and_a_reject_keeps_what_could_be_read(
    app: Notifier,
) -> None:
    event = sample_event(5, event_id=uuid.uuid4())
    invalid = {**sample_event(6, event_id=uuid.uuid4()), "occurred_at": "yesterday"}
    with RunningWorker(app):
        submit(app, event)
        wait_until(lambda: settled(app, 1))
        submit(app, event)
        submit(app, invalid)
        wait_until(lambda: len(outbox(app.database)) == 4)
    messages = {m["type"]: m for m in outbox(app.database)}
    assert set(messages) == {"event.accepted", "delivery.sent", "event.duplicate", "event.rejected"}
    assert messages["event.duplicate"]["event_id"] == event["event_id"]
    rejected = messages["event.rejected"]
    # Read from the invalid body: its id, agency and dossier (notifier itself submitted
    # it, so the agency is within its submitter's scope and the reject is the agency's).
    assert rejected["event_id"] == invalid["event_id"]
    assert rejected["agency"] == invalid["agency"]["code"]
    assert rejected["dossier_code"] == invalid["dossier"]["code"]
    assert "occurred_at" in rejected["rejection"]["reason"]
    with app.database.engine.connect() as connection:
        duplicates = connection.execute(
            sa.select(events.c.duplicates).where(events.c.event_id == uuid.UUID(event["event_id"]))
        ).scalar_one()
        reject = connection.execute(sa.select(rejected_events)).mappings().one()
    assert duplicates == 1
    assert (reject["event_id"], reject["dossier_code"]) == (
        invalid["event_id"],
        invalid["dossier"]["code"],
    )


def test_a_body_that_is_not_json_is_announced_as_a_reject_of_no_agency(app: Notifier) -> None:
    with RunningWorker(app):
        app.submit(b'{"event_id": "x", "agency": {"code": "+84912345678"', source="test")
        wait_until(lambda: outbox(app.database))
    [message] = outbox(app.database)
    assert message["type"] == "event.rejected"
    assert (message["agency"], message["event_id"], message["dossier_code"]) == (None, None, None)


def test_an_admins_resolution_of_an_unknown_delivery_is_announced(app: Notifier) -> None:
    with RunningWorker(app):
        submit(app, sample_event(7, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 1))
    [delivery] = rows(app)
    with app.database.begin() as connection:
        # Held as unknown (as the sender holds a call of unknown outcome).
        assert set_status(
            connection,
            delivery["delivery_id"],
            only_from=["sent"],
            values={"status": DeliveryStatus.UNKNOWN.value},
        )
    replayer = Replayer(app, submit=lambda *_: None)
    result = replayer.resolve(delivery["delivery_id"], Resolution.MARK_SENT, actor="lan")
    assert result.outcome is ReplayOutcome.MARKED_SENT
    assert types_of(outbox(app.database)) == [
        "event.accepted",
        "delivery.sent",
        "delivery.unknown",
        "delivery.sent",
    ]
    again = replayer.resolve(delivery["delivery_id"], Resolution.MARK_SENT, actor="lan")
    assert again.outcome is ReplayOutcome.NOT_REPLAYABLE
    assert len(outbox(app.database)) == 4  # nothing changed, nothing announced


def test_every_final_status_is_announced_and_no_other() -> None:
    assert {DeliveryStatus(s) for s in ANNOUNCED} == {s for s in DeliveryStatus if s.final}
    assert {
        DeliveryStatus.QUEUED,
        DeliveryStatus.SENDING,
        DeliveryStatus.TEMPORARY_FAILURE,
    }.isdisjoint({DeliveryStatus(s) for s in ANNOUNCED})


def _planned_delivery(database: Database, agency: str = "000.00.12.H29") -> uuid.UUID:
    """One event with one queued delivery, written straight to the tables."""
    now = datetime.now(UTC)
    dossier = f"{agency}-261203-0001"
    event_id, delivery_id = uuid.uuid4(), uuid.uuid4()
    with database.begin() as connection:
        connection.execute(
            events.insert().values(
                event_id=event_id,
                received_at=now,
                occurred_at=now,
                source_system="test",
                agency_code=agency,
                dossier_code=dossier,
                procedure_code="1.0001",
                status="received",
            )
        )
        connection.execute(
            deliveries.insert().values(
                delivery_id=delivery_id,
                event_id=event_id,
                dossier_code=dossier,
                agency_code=agency,
                procedure_code="1.0001",
                event_status="received",
                channel="email",
                language="vi",
                template="received",
                recipient_masked="c***@example.com",
                recipient_hash="h",
                status="queued",
                created_at=now,
                updated_at=now,
            )
        )
    return delivery_id


def test_a_status_change_that_rolls_back_leaves_nothing_to_announce(database: Database) -> None:
    delivery_id = _planned_delivery(database)
    seen_inside: list[int] = []

    def change_then_fail() -> None:
        with database.begin() as connection:
            assert set_status(
                connection,
                delivery_id,
                only_from=["queued"],
                values={"status": DeliveryStatus.SUPPRESSED.value},
            )
            seen_inside.append(len(connection.execute(sa.select(status_outbox)).all()))
            raise RuntimeError("the transaction fails after the change")

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert seen_inside == [1]  # written inside the transaction...
    assert outbox(database) == []  # ...and gone with it
    with database.begin() as connection:
        set_status(
            connection,
            delivery_id,
            only_from=["queued"],
            values={"status": DeliveryStatus.SUPPRESSED.value},
        )
    [message] = outbox(database)
    assert message["type"] == "delivery.suppressed"
    assert message["delivery"]["id"] == str(delivery_id)
    json.dumps(message)  # publishable as it is


def test_published_rows_are_marked_and_pruned_and_a_failed_publish_keeps_them(
    database: Database,
) -> None:
    delivery_id = _planned_delivery(database)
    with database.begin() as connection:
        set_status(connection, delivery_id, only_from=["queued"], values={"status": "suppressed"})
    store = StatusOutbox(database)

    def refused(_pending: list[Any]) -> None:
        raise ConnectionError("no confirm")

    with pytest.raises(ConnectionError):
        store.publish_pending(refused, batch=10)
    assert store.pending_count() == 1
    published: list[Any] = []
    assert store.publish_pending(published.extend, batch=10) == 1
    assert [p.message()["delivery"]["id"] for p in published] == [str(delivery_id)]
    assert published[0].routing_key == "000~00~12~H29.delivery.suppressed"
    assert store.pending_count() == 0
    assert store.publish_pending(published.extend, batch=10) == 0
    assert store.prune(datetime.now(UTC), batch=10) == 0  # not counted in the metrics yet
    MetricCounters(database).fold_all()
    assert store.prune(datetime.now(UTC), batch=10) == 1
    assert outbox(database) == []


@pytest.mark.parametrize("with_rabbitmq", [True, False])
def test_the_purge_prunes_published_changes_and_keeps_pending_ones_when_a_stream_exists(
    database: Database, with_rabbitmq: bool
) -> None:
    published, pending = _planned_delivery(database), _planned_delivery(database)
    for delivery_id in (published, pending):
        with database.begin() as connection:
            set_status(
                connection, delivery_id, only_from=["queued"], values={"status": "suppressed"}
            )
    StatusOutbox(database).publish_pending(lambda _rows: None, batch=1)
    MetricCounters(database).fold_all()
    broker = {"broker_url": "amqp://guest:guest@127.0.0.1:5672/x"} if with_rabbitmq else {}
    retention = Retention(database, make_settings(database_url=database.url, **broker))
    soon = retention.purge(now=datetime.now(UTC) + timedelta(days=1))
    later = retention.purge(now=datetime.now(UTC) + timedelta(days=3))
    assert soon.statuses == 0  # kept two days after publication (the default)
    left = [m["delivery"]["id"] for m in outbox(database)]
    if with_rabbitmq:
        # The published change is gone; the pending one is never lost to the purge.
        assert later.statuses == 1
        assert left == [str(pending)]
    else:
        # No stream without RabbitMQ: changes go by age alone.
        assert later.statuses == 2
        assert left == []
    # The statuses themselves stay, for the status API.
    with database.engine.connect() as connection:
        kept = connection.execute(sa.select(deliveries.c.status)).scalars().all()
    assert kept == ["suppressed", "suppressed"]


def test_the_metrics_show_the_changes_waiting_to_be_published(app: Notifier) -> None:
    from notifier.ops.metrics import exposition, sample_value, state_registry

    def scrape(name: str) -> float | None:
        return sample_value(exposition(state_registry(app))[0].decode(), name)

    assert scrape("notifier_status_outbox_pending") == 0
    assert scrape("notifier_status_outbox_oldest_pending_seconds") == 0
    delivery_id = _planned_delivery(app.database)
    with app.database.begin() as connection:
        set_status(connection, delivery_id, only_from=["queued"], values={"status": "sent"})
    assert scrape("notifier_status_outbox_pending") == 1
    assert (scrape("notifier_status_outbox_oldest_pending_seconds") or -1) >= 0
    StatusOutbox(app.database).publish_pending(lambda _rows: None, batch=10)
    assert scrape("notifier_status_outbox_pending") == 0


def test_an_announced_delivery_reads_the_same_on_both_databases(database: Database) -> None:
    """PostgreSQL builds the outbox rows in SQL (one statement per group), SQLite in
    Python: the message a receiver gets is the same, field for field."""
    delivery_id = _planned_delivery(database)
    with database.begin() as connection:
        set_status(
            connection,
            delivery_id,
            only_from=["queued"],
            values={"status": DeliveryStatus.SUPPRESSED.value},
        )
    with database.engine.connect() as connection:
        row = connection.execute(
            sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)
        ).one()
    [message] = outbox(database)

    def moment(text: str) -> datetime:
        assert text.endswith("Z")
        return datetime.fromisoformat(text[:-1] + "+00:00")

    assert set(message) == {
        "schema", "type", "occurred_at", "agency", "event_id", "dossier_code", "delivery",
        "rejection", "id", "sequence",
    }
    assert message["schema"] == "notifier.status.v1"
    assert message["type"] == "delivery.suppressed"
    assert message["agency"] == "000.00.12.H29"
    assert message["event_id"] == str(row.event_id)
    assert message["dossier_code"] == row.dossier_code
    assert message["rejection"] is None
    assert moment(message["occurred_at"]) == row.updated_at.replace(tzinfo=UTC)
    delivery = message["delivery"]
    assert {k: v for k, v in delivery.items() if not k.endswith("_at")} == {
        "id": str(delivery_id),
        "channel": "email",
        "provider": None,
        "status": "suppressed",
        "attempts": row.attempts,
        "recipient": "c***@example.com",
        "fallback_of": None,
    }
    assert moment(delivery["created_at"]) == row.created_at.replace(tzinfo=UTC)
    assert moment(delivery["updated_at"]) == row.updated_at.replace(tzinfo=UTC)
