"""Held deliveries survive a worker killed with SIGKILL and a real RabbitMQ restart
(issue 18, "how it is checked"): SMS deliveries held for quiet hours, a worker up and
sweeping, the broker stopped (``rabbitmqctl stop_app``), the worker killed with
``kill -9`` while the broker is down, the broker started again (``start_app``), then a
new worker: each held delivery is sent exactly once at its due time, counted at the
eSMS simulator, none lost.

The broker restarted is a RabbitMQ node of the test's own (tests/faults/rabbit_cluster.py,
one node on its own loopback ports, name and directory), so the machine's RabbitMQ,
which other sessions use, is never stopped; the node is killed and its directory removed
whatever happens. tests/integration/test_held_restarts.py plays the outage on a vhost
instead; this one stops the whole broker.

Run alone with `./dev test tests/faults/test_held_broker_restart.py -s`.
"""

from __future__ import annotations

import json
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

from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus, HoldReason
from notifier.store.schema import deliveries
from tests.faults.rabbit_cluster import RabbitCluster, RabbitNode, rabbitmq_missing
from tests.faults.test_faults import WorkerProcess
from tests.integration.test_held_restarts import (
    bring_due,
    consumers,
    hold_sms_overnight,
    sent_rows,
)
from tests.support import notifier_env, rabbit_settings, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

HELD = 6


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RabbitCluster]:
    """A one-node RabbitMQ of the test's own: stopping it disturbs nobody else."""
    missing = rabbitmq_missing()
    if missing is not None:
        pytest.skip(missing)
    node = RabbitCluster(tmp_path, size=1)
    try:
        yield node.start()
    finally:
        node.close()  # kills the node and removes its directory, even on failure


def broker_refuses(url: str) -> bool:
    """Whether the broker turns a client away (its application is stopped)."""
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPConnectionError:
        return True
    return False


def held_rows(database: Database, ids: list[uuid.UUID]) -> Counter[str]:
    with database.engine.connect() as connection:
        return Counter(
            connection.execute(
                sa.select(deliveries.c.status).where(deliveries.c.delivery_id.in_(ids))
            ).scalars()
        )


@pytest.mark.timeout(600)
def test_held_sms_survive_a_worker_kill_9_and_a_rabbitmq_restart_and_are_sent_once_when_due(
    broker: RabbitCluster,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    node: RabbitNode = broker.nodes[0]
    amqp_url = broker.broker_url()
    with LocalProviders() as providers:
        settings = rabbit_settings(
            amqp_url,
            pg_url,
            queue_prefix,
            sweeper={"interval_s": 0.5},
            **providers.settings_overrides(),
        )
        phones = [f"0914{i:06d}" for i in range(HELD)]
        ids = hold_sms_overnight(settings, phones)
        env = notifier_env(
            settings,
            NOTIFIER_SWEEPER__INTERVAL_S="0.5",
            NOTIFIER_CHANNELS__SMS__PROVIDERS=json.dumps(["esms", "speedsms"]),
        )
        log = tmp_path / "workers.log"
        sms_queue = f"{queue_prefix}.sms"
        first = WorkerProcess(env, log).start()
        second = None
        try:
            # The first worker is up and sweeping; then the broker stops, the worker
            # dies hard while it is down, and the broker comes back.
            wait_until(lambda: consumers(amqp_url, sms_queue) > 0, timeout=90)
            node.ctl("stop_app")
            try:
                assert broker_refuses(amqp_url)
                first.kill9()
            finally:
                node.ctl("start_app", timeout=120)
            node.wait_started()
            assert held_rows(pg_database, ids) == {DeliveryStatus.SCHEDULED: HELD}

            second = WorkerProcess(env, log).start()
            wait_until(lambda: consumers(amqp_url, sms_queue) > 0, timeout=90)
            assert providers.esms.messages == []  # still held: not sent before its time
            assert held_rows(pg_database, ids) == {DeliveryStatus.SCHEDULED: HELD}

            due = datetime.now(UTC) + timedelta(seconds=2)
            bring_due(pg_database, ids, due)
            wait_until(lambda: len(providers.esms.messages) >= HELD, timeout=120)
            wait_until(lambda: sent_rows(pg_database) == HELD, timeout=60)
        finally:
            if second is not None:
                second.terminate()
            if first.process is not None and first.process.poll() is None:
                first.kill9()
        # Read after the second worker stopped: a late second copy would be counted.
        sent = Counter(m.national_phone for m in providers.esms.messages)
    assert sent == Counter(phones)  # each exactly once, none lost
    with pg_database.engine.connect() as connection:
        found = list(
            connection.execute(sa.select(deliveries).where(deliveries.c.delivery_id.in_(ids)))
        )
    assert len(found) == HELD
    for row in found:
        assert row.status == DeliveryStatus.SENT
        assert row.attempts == 1
        assert row.sent_at >= due  # not a second early
        assert row.hold_reason == HoldReason.QUIET_HOURS
