"""Two machines, one provider limit: two `notifier worker` processes, each configured as
if it were alone (one process, its own machine), share the email provider's rate limit
through the machine's Redis. Counted at the provider (the SMTP simulator stamps each
message as it arrives) over sliding windows: a bound on counts, not on timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis
from notifier_simulators.smtp import SmtpCatcher

from notifier.amqp import declare_topology
from notifier.ops.samples import sample_event
from notifier.pipeline.actors import queue_name
from notifier.publisher import EventPublisher
from notifier.settings import Settings
from tests.support import REPO, notifier_env, rabbit_settings, wait_until

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
RATE, BURST = 10, 3
# Calls admitted up to this far apart may reach the provider together.
JITTER_S = 0.5


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the machine's Redis; its keys removed after."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis must be running on 127.0.0.1:6379 ({type(exc).__name__})")
    prefix = f"notifier-test-{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def _machine(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "notifier.cli.main", "worker", "--processes", "1"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _consumers(settings: Settings, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:  # not declared yet
        return 0
    finally:
        if connection.is_open:
            connection.close()


def busiest_window(times: list[float], seconds: float) -> int:
    """The most arrivals in any window of ``seconds`` (each window starts at an arrival)."""
    times = sorted(times)
    best, end = 0, 0
    for start, at in enumerate(times):
        while end < len(times) and times[end] < at + seconds:
            end += 1
        best = max(best, end - start)
    return best


def test_busiest_window_counts_the_most_arrivals_in_any_window_of_that_length() -> None:
    assert busiest_window([0.0, 0.1, 0.95, 1.0, 1.5, 3.0], 1.0) == 3
    assert busiest_window([], 1.0) == 0


def test_two_machines_together_send_a_provider_no_more_than_its_rate_plus_burst(
    amqp_url: str, pg_url: str, queue_prefix: str, redis_prefix: str, tmp_path: Path
) -> None:
    with SmtpCatcher() as smtp:
        settings = rabbit_settings(
            amqp_url, pg_url, queue_prefix, adapters={"email": {"port": smtp.port}}
        )
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        declare_topology(connection.channel(), settings.events)
        connection.close()
        env = notifier_env(
            settings,
            NOTIFIER_LIMITS__STORAGE_URL=REDIS_URL,
            NOTIFIER_LIMITS__KEY_PREFIX=redis_prefix,
            NOTIFIER_PROVIDERS__EMAIL__RATE_PER_S=str(RATE),
            NOTIFIER_PROVIDERS__EMAIL__BURST=str(BURST),
            # One delivery per message and small groups of events, so both machines
            # have email to send at the same time.
            NOTIFIER_WORKER__BATCH_SIZE="1",
            NOTIFIER_EVENTS__BATCH_SIZE="5",
            NOTIFIER_EVENTS__PREFETCH="10",
        )
        machines = [_machine(env, tmp_path / f"machine-{n}.log") for n in (1, 2)]
        try:
            email_queue = queue_name(settings.worker, "email")
            wait_until(lambda: _consumers(settings, email_queue) >= 2, timeout=90, interval=0.5)
            count = 120
            bodies = [sample_event(i, event_id=uuid.uuid4(), status=None) for i in range(count)]
            for body in bodies:
                body["dossier"]["status"] = "received"  # every event sends one email
            with EventPublisher(settings.broker_url, settings.events) as publisher:
                assert publisher.publish_many(bodies).failed == []
            wait_until(lambda: len(smtp.messages) >= count, timeout=120, interval=0.5)
        finally:
            for machine in machines:
                os.killpg(machine.pid, signal.SIGTERM)
            for machine in machines:
                machine.wait(timeout=60)
        times = [m.received_at for m in smtp.messages]
        logs = [(tmp_path / f"machine-{n}.log").read_text(errors="replace") for n in (1, 2)]

    busiest = {seconds: busiest_window(times, seconds) for seconds in (1.0, 2.0, 5.0)}
    sent_by = [_sends(log) for log in logs]
    print(
        f"shared-rate-limit: emails={len(times)} rate={RATE}/s burst={BURST} "
        f"sent_by_machine={sent_by} busiest_windows={busiest}"
    )
    assert len(times) == count  # every email arrived
    # Both machines sent (else one limit per machine would pass this test too).
    assert min(sent_by) > 0
    # A call's place in the shared window is taken before it is sent; its arrival adds
    # the send's own latency (an SMTP dialogue, a new connection now and then, a busy
    # machine), hence windows of 2 s and 5 s and JITTER_S's worth of calls allowed on
    # top. Alone, each machine would send RATE a second: 40 in 2 s and 100 in 5 s.
    for seconds in (2.0, 5.0):
        assert busiest[seconds] <= RATE * (seconds + JITTER_S) + BURST


def _sends(log: str) -> int:
    """Deliveries a worker's JSON log says it sent."""
    total = 0
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "deliveries done":
            total += int(entry.get("sent", 0)) + int(entry.get("delivered", 0))
    return total
