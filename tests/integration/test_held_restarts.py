"""Held deliveries survive a worker killed with SIGKILL and a broker that lost its
connections and queues (issue 18): each is sent exactly once when due, by the next
worker's sweeper. Real worker processes, RabbitMQ, PostgreSQL and the eSMS simulator.

The shared RabbitMQ is not restarted (other sessions use it): the outage is played on
this session's own vhost, whose connections are closed and whose queues are deleted
while the deliveries are held. Held deliveries have no broker message at all, which is
the point: nothing of them lives in RabbitMQ to lose."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pika
import pika.exceptions
import pytest
import sqlalchemy as sa
from notifier_simulators.local import LocalProviders

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.plugins.registry import Registry
from notifier.settings import Settings
from notifier.store import Database
from notifier.store.deliveries.lifecycle import HoldReason
from notifier.store.schema import deliveries
from tests.faults.test_faults import WorkerProcess
from tests.support import notifier_env, rabbit_settings, wait_until

pytestmark = pytest.mark.integration

HELD = 6


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def consumers(amqp_url: str, queue: str) -> int:
    """How many consumers a queue has (0 when it does not exist yet)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def broker_outage(amqp_url: str, prefix: str, channels: list[str]) -> None:
    """This session's vhost only: every connection closed, this test's queues deleted."""
    vhost = amqp_url.rsplit("/", 1)[1]
    for line in rabbitmqctl("list_connections", "-p", vhost, "pid").splitlines():
        if line.strip().startswith("<"):
            rabbitmqctl("close_connection", line.strip(), "test: broker outage")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for name in channels:
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(f"{prefix}.{name}{suffix}")
    connection.close()


def bring_due(database: Database, ids: list[uuid.UUID], due: datetime) -> None:
    """The window's end comes: the worker processes run on the real clock, so the held
    rows' due time is brought forward instead of the clock moved."""
    with database.begin() as connection:
        connection.execute(
            sa.update(deliveries).where(deliveries.c.delivery_id.in_(ids)).values(due_at=due)
        )


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as running:
        yield running



def hold_sms_overnight(settings: Settings, phones: list[str]) -> list[uuid.UUID]:
    """One SMS per phone, ingested and held for quiet hours, due ten hours from now (a
    worker must not send them before :func:`bring_due`); returns their delivery ids."""
    app = Notifier(settings)
    try:
        ids = []
        for phone in phones:
            event = sample_event(
                1, status=Status.RESULT_READY, event_id=uuid.uuid4(), contacts={"phone": phone}
            )
            result = app.ingest.handle(json.dumps(event), source="test")
            ids += [delivery_id for delivery_id, _channel in result.to_enqueue]
        assert len(ids) == len(phones)
        due = datetime.now(UTC) + timedelta(hours=10)  # tomorrow's 07:00, say
        assert len(app.deliveries.hold(ids, due, HoldReason.QUIET_HOURS)) == len(phones)
    finally:
        app.close()
    return ids

def test_held_sms_survive_a_worker_kill_9_and_a_broker_outage_and_are_sent_once_when_due(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
    tmp_path: Path,
) -> None:
    settings = rabbit_settings(
        amqp_url,
        pg_url,
        queue_prefix,
        sweeper={"interval_s": 0.5},
        **providers.settings_overrides(),
    )
    phones = [f"0913{i:06d}" for i in range(HELD)]
    ids = hold_sms_overnight(settings, phones)
    env = notifier_env(
        settings,
        NOTIFIER_SWEEPER__INTERVAL_S="0.5",
        NOTIFIER_CHANNELS__SMS__PROVIDERS=json.dumps(["esms", "speedsms"]),
    )
    log = tmp_path / "workers.log"
    first = WorkerProcess(env, log).start()
    second = None
    try:
        # The first worker is up and sweeping, then dies hard; the broker loses
        # everything of this test.
        sms_queue = f"{queue_prefix}.sms"
        wait_until(lambda: consumers(amqp_url, sms_queue) > 0, timeout=90)
        first.kill9()
        broker_outage(amqp_url, queue_prefix, sorted(Registry.from_settings(settings).channels))
        second = WorkerProcess(env, log).start()
        wait_until(lambda: consumers(amqp_url, sms_queue) > 0, timeout=90)
        assert providers.esms.messages == []  # still held
        due = datetime.now(UTC) + timedelta(seconds=2)
        bring_due(pg_database, ids, due)
        wait_until(lambda: len(providers.esms.messages) >= HELD, timeout=120)
        # A little longer: nothing more arrives (no second copy of any).
        wait_until(lambda: sent_rows(pg_database) == HELD, timeout=60)
    finally:
        if second is not None:
            second.terminate()
        if first.process is not None and first.process.poll() is None:
            first.kill9()
    sent = Counter(m.national_phone for m in providers.esms.messages)
    assert sent == Counter(phones)  # each exactly once
    with pg_database.engine.connect() as connection:
        found = list(
            connection.execute(sa.select(deliveries).where(deliveries.c.delivery_id.in_(ids)))
        )
    for row in found:
        assert row.status == "sent"
        assert row.attempts == 1
        assert row.sent_at >= due  # not a second early
        assert row.hold_reason == "quiet_hours"


def sent_rows(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count())
                .select_from(deliveries)
                .where(deliveries.c.status == "sent")
            ).scalar_one()
        )
