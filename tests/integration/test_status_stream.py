"""The status stream on the real RabbitMQ and PostgreSQL (issue 17, item 2): every status
change of a burst arrives as committed, a rolled-back change announces nothing, and a
relay killed (SIGKILL) between the publish and the mark re-announces, with the same ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import sqlalchemy as sa
from jsonschema import Draft202012Validator
from notifier_simulators.smtp import SmtpCatcher

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.pipeline.relay import StatusRelay, declare_status_exchange
from notifier.settings import Settings
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus, set_status
from notifier.store.optouts import OptOutStore
from notifier.store.schema import deliveries, status_outbox
from notifier.store.statuses import StatusOutbox
from tests.support import REPO, RunningWorker, notifier_env, rabbit_settings, wait_until
from tests.test_status_record import _planned_delivery, outbox

pytestmark = pytest.mark.integration

SCHEMA = json.loads((REPO / "schemas" / "status-message.v1.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
HASH_KEY = "notifier-development-only"


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as catcher:
        yield catcher


def stream_settings(
    amqp_url: str, pg_url: str, prefix: str, smtp: SmtpCatcher | None = None
) -> Settings:
    return rabbit_settings(
        amqp_url,
        pg_url,
        prefix,
        adapters={"email": {"host": "127.0.0.1", "port": smtp.port if smtp else 1}},
        statuses={
            "exchange": f"{prefix}.statuses",
            "queue_prefix": f"{prefix}.statuses",
            "interval_s": 0.5,
        },
    )


class StatusQueue:
    """A queue of the test's own bound to the status exchange (``#``: every agency)."""

    def __init__(self, amqp_url: str, settings: Settings, binding: str = "#") -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        declare_status_exchange(self.channel, settings.statuses)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, settings.statuses.exchange, routing_key=binding)
        self.received: list[tuple[Any, dict[str, Any]]] = []

    def drain(self) -> list[dict[str, Any]]:
        """Everything that arrived so far (kept), as (properties, message)."""
        while True:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return [m for _p, m in self.received]
            self.received.append((properties, json.loads(body)))

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def finished(database: Database) -> int:
    """How many deliveries are in a final status."""
    with database.engine.connect() as connection:
        found = connection.execute(sa.select(deliveries.c.status)).scalars().all()
    return sum(DeliveryStatus(s).final for s in found)


def published_all(database: Database) -> bool:
    return StatusOutbox(database).pending_count() == 0


def test_every_status_change_of_a_burst_arrives_exactly_as_committed(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str, smtp: SmtpCatcher
) -> None:
    settings = stream_settings(amqp_url, pg_url, queue_prefix, smtp)
    stream = StatusQueue(amqp_url, settings)
    opted_out = "no.thanks@example.com"
    OptOutStore(pg_database, HASH_KEY).add(opted_out, "email", "portal")
    burst = []
    for index in range(40):
        event = sample_event(index, status=Status.RESULT_READY, event_id=uuid.uuid4())
        event["applicant"]["contacts"] = {
            "email": opted_out if index % 10 == 0 else f"citizen{index}@example.com"
        }
        burst.append(event)
    invalid = [{**sample_event(90 + i, event_id=uuid.uuid4()), "status": 7} for i in range(3)]
    app = Notifier(settings)
    try:
        with RunningWorker(app):
            for event in [*burst, *invalid, burst[1], burst[2]]:
                app.submit(json.dumps(event, ensure_ascii=False).encode(), source="test")
            wait_until(lambda: len(smtp.messages) == 36, timeout=60)
            wait_until(lambda: len(outbox(pg_database)) == 40 + 40 + 3 + 2, timeout=60)
            wait_until(lambda: published_all(pg_database), timeout=60)
            wait_until(lambda: len(stream.drain()) >= 85, timeout=30)
        received = stream.drain()
        properties = [p for p, _m in stream.received]
    finally:
        stream.close()
    committed = outbox(pg_database)
    # Exactly the committed changes, each once (nothing was restarted), byte for byte.
    assert sorted(received, key=lambda m: m["sequence"]) == committed
    for message in received:
        VALIDATOR.validate(message)
    for props, message in zip(properties, received, strict=True):
        assert props.message_id == message["id"]
        assert props.type == message["type"]
        assert props.content_type == "application/json"
        assert props.delivery_mode == 2
    types = [m["type"] for m in received]
    assert types.count("event.accepted") == 40
    assert types.count("delivery.sent") == 36
    assert types.count("delivery.suppressed") == 4
    assert types.count("event.rejected") == 3
    assert types.count("event.duplicate") == 2
    # Each delivery's last announced status is its status in the log.
    with pg_database.engine.connect() as connection:
        found = connection.execute(sa.select(deliveries.c.delivery_id, deliveries.c.status))
        statuses = {row.delivery_id: row.status for row in found}
    last = {
        m["delivery"]["id"]: m["delivery"]["status"]
        for m in sorted(received, key=lambda m: m["sequence"])
        if m["delivery"]
    }
    assert last == {str(k): v for k, v in statuses.items()}
    # No contact in clear anywhere in the stream.
    text = json.dumps(received)
    assert "@example.com" not in text.replace("***@example.com", "")


def test_a_rolled_back_change_announces_nothing(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str
) -> None:
    settings = stream_settings(amqp_url, pg_url, queue_prefix)
    stream = StatusQueue(amqp_url, settings)
    rolled_back, committed = _planned_delivery(pg_database), _planned_delivery(pg_database)
    relay = StatusRelay(pg_database, amqp_url, settings.statuses)

    def change_then_fail() -> None:
        with pg_database.begin() as connection:
            set_status(
                connection,
                rolled_back,
                only_from=["queued"],
                values={"status": DeliveryStatus.SUPPRESSED.value},
            )
            raise RuntimeError("the transaction fails after the change")

    try:
        with pytest.raises(RuntimeError):
            change_then_fail()
        with pg_database.begin() as connection:
            set_status(
                connection,
                committed,
                only_from=["queued"],
                values={"status": DeliveryStatus.SUPPRESSED.value},
            )
        assert relay.relay_once() == 1
        wait_until(lambda: stream.drain())
        # The relay publishes in order: had the rolled-back change been recorded, its
        # smaller sequence would have come first.
        assert relay.relay_once() == 0
        received = stream.drain()
    finally:
        relay._disconnect()
        stream.close()
    assert [m["delivery"]["id"] for m in received] == [str(committed)]


def test_an_idle_relay_keeps_its_broker_connection_past_the_heartbeat_timeout(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str
) -> None:
    """A relay waiting for changes answers RabbitMQ's heartbeats, so a quiet night does
    not cost it its connection (and the next change a failed publish first)."""
    settings = stream_settings(amqp_url, pg_url, queue_prefix)
    stream = StatusQueue(amqp_url, settings)
    first, second = _planned_delivery(pg_database), _planned_delivery(pg_database)
    relay = StatusRelay(pg_database, amqp_url, settings.statuses)
    relay.heartbeat_s = 1  # RabbitMQ closes a connection after two missed heartbeats
    thread = threading.Thread(target=relay.run, daemon=True)

    def change(delivery_id: uuid.UUID) -> None:
        with pg_database.begin() as connection:
            set_status(connection, delivery_id, only_from=["queued"], values={"status": "sent"})

    def announced() -> set[str]:
        return {m["delivery"]["id"] for m in stream.drain() if m["delivery"]}

    try:
        change(first)
        thread.start()
        wait_until(lambda: str(first) in announced(), timeout=20)
        connection = relay._connection
        time.sleep(6)  # idle for six heartbeat intervals
        change(second)
        wait_until(lambda: str(second) in announced(), timeout=20)
        assert connection is not None
        assert relay._connection is connection  # never lost, never opened again
        assert connection.is_open
    finally:
        relay.stopping.set()
        thread.join(timeout=10)
        stream.close()


_KILLED_RELAY = """
import sys, time
from pathlib import Path
from notifier.pipeline.relay import StatusRelay
from notifier.settings import StatusSettings
from notifier.store import Database

database_url, amqp_url, exchange, marker = sys.argv[1:5]

class PausedAfterPublish(StatusRelay):
    def publish(self, pending):
        super().publish(pending)  # every confirm came back...
        Path(marker).write_text(str(len(pending)))
        time.sleep(600)  # ...and the process is killed before the rows are marked

relay = PausedAfterPublish(Database(database_url), amqp_url, StatusSettings(exchange=exchange))
relay.relay_once()
"""


def test_a_relay_killed_between_publish_and_mark_publishes_again_with_the_same_ids(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str, tmp_path: Path
) -> None:
    settings = stream_settings(amqp_url, pg_url, queue_prefix)
    stream = StatusQueue(amqp_url, settings)
    ids = [_planned_delivery(pg_database) for _ in range(5)]
    with pg_database.begin() as connection:
        for delivery_id in ids:
            set_status(connection, delivery_id, only_from=["queued"], values={"status": "sent"})
    marker = tmp_path / "published"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_RELAY,
            pg_url,
            amqp_url,
            settings.statuses.exchange,
            str(marker),
        ],
        cwd=REPO,
    )
    relay = StatusRelay(pg_database, amqp_url, settings.statuses)
    try:
        wait_until(marker.exists, timeout=60)
        assert marker.read_text() == "5"
        first = wait_until(lambda: len(stream.drain()) == 5 and stream.drain())
        # Claimed by the paused relay: another relay skips the rows, it does not wait.
        assert relay.relay_once() == 0
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        # PostgreSQL ends the dead relay's transaction: its rows are pending again.
        wait_until(lambda: relay.relay_once() == 5, timeout=30)
        received = wait_until(lambda: len(stream.drain()) == 10 and stream.drain())
    finally:
        if process.poll() is None:
            process.kill()
        relay._disconnect()
        stream.close()
    assert published_all(pg_database)
    committed = outbox(pg_database)
    assert len(committed) == 5
    # At least once: each change twice, with the same id and the same body.
    assert sorted(first, key=lambda m: m["sequence"]) == committed
    assert sorted(received[5:], key=lambda m: m["sequence"]) == committed
    with pg_database.engine.connect() as connection:
        marked = connection.execute(
            sa.select(sa.func.count()).where(status_outbox.c.published_at.is_not(None))
        ).scalar_one()
    assert marked == 5


def test_a_worker_killed_mid_burst_and_restarted_announces_every_committed_change(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
    tmp_path: Path,
) -> None:
    """`notifier worker` (its relay included) killed with SIGKILL while the burst's
    statuses are being published, then started again."""
    from tests.faults.test_faults import WorkerProcess, declare, publish

    settings = stream_settings(amqp_url, pg_url, queue_prefix, smtp)
    declare(settings)
    stream = StatusQueue(amqp_url, settings)
    env = notifier_env(settings, NOTIFIER_STATUSES__INTERVAL_S="0.5")
    events = []
    for index in range(60):
        event = sample_event(index, status=Status.RESULT_READY, event_id=uuid.uuid4())
        event["applicant"]["contacts"] = {"email": f"citizen{index}@example.com"}
        events.append(event)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, log).start()
    try:
        publish(settings, events)
        wait_until(lambda: len(stream.drain()) >= 20, timeout=90)
        worker.kill9()
        worker = WorkerProcess(env, log).start()
        # A send the kill interrupted is held as unknown (SMTP does not drop repeats):
        # that is a final status too, and announced.
        wait_until(lambda: finished(pg_database) == 60, timeout=120)
        wait_until(
            lambda: len(outbox(pg_database)) == 120 and published_all(pg_database), timeout=120
        )
        wait_until(
            lambda: {m["id"] for m in stream.drain()} >= {m["id"] for m in outbox(pg_database)}
        )
        assert worker.terminate() == 0
        received = stream.drain()
    finally:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill9()
        stream.close()
    committed = {m["id"]: m for m in outbox(pg_database)}
    # Every committed change arrived; a repeat is the same change (same id, same body).
    assert {m["id"] for m in received} == set(committed)
    assert all(m == committed[m["id"]] for m in received)
    types = [m["type"] for m in committed.values()]
    assert types.count("event.accepted") == 60
    assert types.count("delivery.sent") + types.count("delivery.unknown") == 60
    assert len({m["delivery"]["id"] for m in committed.values() if m["delivery"]}) == 60
