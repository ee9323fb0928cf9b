"""A RabbitMQ node killed mid-burst: a three-node cluster of the test's own (quorum
queues), `notifier worker` (two processes) and a publisher on every node's address,
a burst of events on all four channels, then ``kill -9`` of the node leading the
events queue and, once it is back, of another node leading a channel queue. Counted
at the providers (the local simulators and the inbox table).

The sweeper is off: a message the broker lost would stay lost, not be swept back.
The machine's own RabbitMQ (port 5672) is never touched (tests/faults/rabbit_cluster.py).
Run alone with `./dev test tests/faults/test_rabbitmq_cluster.py -s`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa
from notifier_simulators.local import LocalProviders

from notifier.amqp import QueuePolicy, declare_topology, node_parameters
from notifier.ops.samples import sample_event
from notifier.publisher import EventPublisher, PublishReport
from notifier.store import Database
from notifier.store.schema import delivery_attempts
from notifier.store.tokens import TokenStore
from tests.faults.rabbit_cluster import RabbitCluster, rabbitmq_missing
from tests.faults.test_crash_under_load import ALL_CHANNELS, SETTLED, at_providers, delivery_rows
from tests.faults.test_faults import WorkerProcess, report
from tests.support import notifier_env, rabbit_settings, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EVENTS = 1000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RabbitCluster]:
    missing = rabbitmq_missing()
    if missing is not None:
        pytest.skip(missing)
    cluster = RabbitCluster(tmp_path)
    try:
        yield cluster.start()
    finally:
        cluster.close()  # kills its nodes and removes their directories, even on failure


def accepted(providers: LocalProviders, database: Database) -> int:
    return sum(sum(c.values()) for c in at_providers(providers, database).values())


@pytest.mark.timeout(600)
def test_killing_the_events_queue_leader_then_a_channel_queue_leader_loses_nothing(
    cluster: RabbitCluster, pg_url: str, pg_database: Database, queue_prefix: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with LocalProviders() as providers:
        settings = rabbit_settings(
            cluster.broker_url(),
            pg_url,
            queue_prefix,
            broker={"queue_type": "quorum"},
            **providers.settings_overrides(),
        )
        connection = pika.BlockingConnection(node_parameters(settings.broker_url))
        declare_topology(connection.channel(), settings.events, QueuePolicy.of(settings))
        connection.close()
        providers.seed_tokens(TokenStore(pg_database, settings.secret_key.get_secret_value()))
        env = notifier_env(
            settings,
            NOTIFIER_BROKER__QUEUE_TYPE="quorum",
            NOTIFIER_SWEEPER__ENABLED="false",
            **{
                f"NOTIFIER_CHANNELS__{name.upper()}__PROVIDERS": json.dumps(channel.providers)
                for name, channel in settings.channels.items()
            },
        )
        bodies = [
            sample_event(i, status=ALL_CHANNELS[i % len(ALL_CHANNELS)], event_id=uuid.uuid4())
            for i in range(EVENTS)
        ]
        expected = EVENTS * 4
        log = tmp_path / "worker.log"
        worker = WorkerProcess(env, log, processes=2).start()
        try:
            # Both worker processes consuming before the burst starts.
            wait_until(
                lambda: log.read_text(errors="replace").count('"bridge consuming"') >= 2,
                timeout=120,
                interval=0.2,
            )
            # The publisher runs through the kills too: what it was told is confirmed
            # must be there, what was not is published again on another node.
            published: list[PublishReport] = []

            handed = [0]  # events handed to the publisher so far

            def paced() -> Iterator[dict[str, object]]:
                # About 100 s of publishing (a TTHC system's steady flow), so both kills
                # land while events still arrive and deliveries are still going out.
                for index, body in enumerate(bodies):
                    if index % 10 == 0:
                        time.sleep(1.0)
                    handed[0] = index
                    yield body

            # The publisher prefers the node that leads the events queue (listed first),
            # the one killed below, so its batch must go on from another node.
            leader = cluster.leader(settings.events.queue)
            others = [n for n in cluster.nodes if n is not leader]
            publisher_url = "amqp://guest:guest@" + ",".join(n.url for n in [leader, *others]) + "/"

            def publish() -> None:
                with EventPublisher(publisher_url, settings.events, spread=False) as publisher:
                    published.append(publisher.publish_batch(paced(), window=100))

            publishing = threading.Thread(target=publish)
            publishing.start()

            # Mid-publish, with deliveries already reaching the providers.
            wait_until(
                lambda: handed[0] >= EVENTS * 0.2 and accepted(providers, pg_database) > 0,
                timeout=180,
                interval=0.1,
            )
            first = cluster.leader(settings.events.queue)
            assert first is leader
            assert publishing.is_alive()  # mid-publish too
            first.kill9()
            at_first_kill = accepted(providers, pg_database)
            first_killed = time.monotonic()
            # Work goes on with two nodes of three.
            wait_until(
                lambda: accepted(providers, pg_database) >= at_first_kill + 300,
                timeout=180,
                interval=0.1,
            )
            resumed_after_first = time.monotonic() - first_killed
            first.start()
            first.wait_started()
            # One node down at a time: the restarted node's replicas caught up, so
            # losing another node leaves every queue a majority.
            wait_until(
                lambda: not any(n.quorum_critical() for n in cluster.nodes),
                timeout=120,
                interval=1,
            )
            channel_queues = [f"{queue_prefix}.{c}" for c in ("email", "sms", "zalo", "portal")]
            leaders = {q: cluster.leader(q) for q in channel_queues}
            queue, second = next((q, n) for q, n in leaders.items() if n is not first)
            assert publishing.is_alive()  # still mid-burst
            second.kill9()
            at_second_kill = accepted(providers, pg_database)
            second_killed = time.monotonic()
            try:
                wait_until(
                    lambda: accepted(providers, pg_database) > at_second_kill,
                    timeout=180,
                    interval=0.1,
                )
            except AssertionError:
                print(cluster.describe_queues())
                print(Counter(r.status for r in delivery_rows(pg_database)))
                raise
            resumed_after_second = time.monotonic() - second_killed
            publishing.join(timeout=240)
            assert not publishing.is_alive()
            wait_until(
                lambda: (
                    (found := delivery_rows(pg_database))
                    and len(found) >= expected
                    and {r.status for r in found} <= SETTLED
                ),
                timeout=300,
                interval=0.5,
            )
        finally:
            worker.terminate()
            # The worker's log outlives the test's temporary directory.
            kept = Path(__file__).resolve().parents[2] / "test-artifacts"
            kept.mkdir(exist_ok=True)
            (kept / "rabbitmq-cluster-worker.log").write_bytes(log.read_bytes())
        final = {str(r.delivery_id): r for r in delivery_rows(pg_database)}
        sent = at_providers(providers, pg_database)
        twice = {i for c in sent.values() for i, n in c.items() if n > 1}
        with pg_database.engine.connect() as connection:
            tries = connection.execute(
                sa.select(delivery_attempts).where(
                    delivery_attempts.c.delivery_id.in_([uuid.UUID(i) for i in twice])
                )
            ).all()
        for delivery_id in twice:  # what the log says of a delivery sent twice
            print(
                "sent twice:",
                final.get(delivery_id),
                [t for t in tries if str(t.delivery_id) == delivery_id],
            )

    (publish_report,) = published
    by_status = Counter(r.status for r in final.values())
    duplicates = {name: sum(1 for n in c.values() if n > 1) for name, c in sent.items()}
    lost = {
        i
        for i, r in final.items()
        if r.status in ("sent", "delivered")
        and r.provider != "speedsms"  # carries no reference of ours; counted below
        and not any(i in c for c in sent.values())
    } | {i for i, r in final.items() if r.status not in SETTLED}
    report(
        "rabbitmq-cluster-node-kills",
        {
            "events": EVENTS,
            "deliveries": len(final),
            "publisher_confirmed": publish_report.confirmed,
            "publisher_failed": len(publish_report.failed),
            "publisher_failovers": publish_report.failovers,
            "accepted_at_first_kill": at_first_kill,
            "accepted_at_second_kill": at_second_kill,
            "second_kill_queue": queue.rsplit(".", 1)[-1],
            "s_to_progress_after_events_leader_kill": round(resumed_after_first, 1),
            "s_to_progress_after_channel_leader_kill": round(resumed_after_second, 1),
            "sent_or_delivered": by_status.get("sent", 0) + by_status.get("delivered", 0),
            "failed": by_status.get("permanent-failure", 0),
            "unknown_provider_may_have_it": by_status.get("unknown", 0),
            "dup_email": duplicates["email"],
            "dup_zalo": duplicates["zalo"],
            "dup_esms_accepted": duplicates["esms"],
            "dup_speedsms": duplicates["speedsms"],
            "dup_portal": duplicates["portal"],
            "lost": len(lost),
            "test_seconds": round(time.monotonic() - started),
        },
    )
    assert publish_report.failed == []
    assert publish_report.confirmed == EVENTS
    assert publish_report.failovers >= 1  # its node was killed mid-batch
    assert at_first_kill < expected  # the kills really happened mid-burst
    assert at_second_kill < expected
    assert len(final) == expected  # every event ingested once, each delivery planned once
    assert lost == set()
    # No worker died: held only where the adapter said the provider may have it (a
    # call that timed out on this loaded machine), never for a broker's sake.
    maybe_sent = {i for i, r in final.items() if r.status == "unknown"}
    assert all((final[i].last_error or "").startswith("may have been sent") for i in maybe_sent)
    # No second send where the provider does not drop repeats; eSMS and the inbox drop
    # repeats of our reference, so each is there once as well.
    assert duplicates == {"email": 0, "esms": 0, "speedsms": 0, "zalo": 0, "portal": 0}
    by_speedsms = sum(
        1 for r in final.values() if r.provider == "speedsms" and r.status in ("sent", "delivered")
    )
    assert by_speedsms <= sum(sent["speedsms"].values())
