"""The fault suite: real worker processes killed with SIGKILL, RabbitMQ restarted, a
provider down and throttling, on the real RabbitMQ and PostgreSQL. Counted at the
provider (the SMTP server sees every message with its delivery id header).

Run alone with `./dev test -m faults`; it is part of the full suite too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa
from notifier_simulators.smtp import SmtpCatcher

from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.publisher import EventPublisher
from notifier.settings import Settings
from notifier.store import Database
from notifier.store.schema import deliveries, delivery_attempts, events
from tests.support import REPO, RunningWorker, notifier_env, rabbit_settings, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FINAL = ("sent", "delivered", "permanent-failure", "unknown")


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as catcher:
        yield catcher


def fault_settings(amqp_url: str, pg_url: str, prefix: str, smtp: SmtpCatcher) -> Settings:
    return rabbit_settings(
        amqp_url,
        pg_url,
        prefix,
        adapters={"email": {"port": smtp.port, "pool_size": 4, "timeout_s": 3}},
    )


class WorkerProcess:
    """`notifier worker` in its own process group, so SIGKILL takes all its processes."""

    def __init__(self, env: dict[str, str], log: Path, processes: int = 1) -> None:
        self.env = env
        self.log = log
        self.processes = processes
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "notifier.cli.main",
                    "worker",
                    "--processes",
                    str(self.processes),
                    "--threads",
                    "8",
                ],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def environments(self) -> list[dict[str, str]]:
        """The environment of each process of this worker (its session, so Dramatiq's
        worker processes too)."""
        assert self.process is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # After the command's closing parenthesis: state, ppid, pgrp, session.
                session = int(stat.read_text().rsplit(")", 1)[1].split()[3])
                if session != self.process.pid:
                    continue
                raw = (stat.parent / "environ").read_bytes()
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0"))
            found.append({pair[0]: pair[1] for pair in pairs if len(pair) == 2})
        return found

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the main process only, as a supervisor sends it: Dramatiq forwards it
        to its worker processes, which stop at once on a second SIGTERM."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # nothing should be left; be sure
        return code


def publish(settings: Settings, bodies: list[dict[str, object]]) -> None:
    with EventPublisher(settings.broker_url, settings.events) as publisher:
        report = publisher.publish_many(bodies)
    assert report.failed == []


def declare(settings: Settings) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    from notifier.amqp import declare_topology

    declare_topology(connection.channel(), settings.events)
    connection.close()


def statuses(database: Database) -> Counter[str]:
    with database.engine.connect() as connection:
        rows = connection.execute(sa.select(deliveries.c.status)).scalars()
        return Counter(rows)


def email_ids(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(deliveries.c.delivery_id).where(deliveries.c.channel == "email")
        ).scalars()
        return {str(r) for r in rows}


def received_ids(smtp: SmtpCatcher) -> Counter[str]:
    return Counter(str(m["X-Notifier-Delivery-Id"]) for m in smtp.messages)


def all_final(database: Database, expected_events: int) -> bool:
    with database.engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
    found = statuses(database)
    return count == expected_events and set(found) <= set(FINAL) and sum(found.values()) > 0


def ids_with_status(database: Database, status: str) -> set[str]:
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(deliveries.c.delivery_id).where(deliveries.c.status == status)
        ).scalars()
        return {str(r) for r in rows}


def answered_maybe_sent(database: Database) -> set[str]:
    """Deliveries held because their adapter said the provider may have the message."""
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(deliveries.c.delivery_id).where(
                deliveries.c.status == "unknown",
                deliveries.c.last_error.like("may have been sent%"),
            )
        ).scalars()
        return {str(r) for r in rows}


def report(name: str, numbers: dict[str, int | float]) -> None:
    """Figures for the closing note, in the test output (-s) and a file."""
    line = f"{name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items())
    print(line)
    out = REPO / "test-artifacts" / "faults.txt"
    out.parent.mkdir(exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def test_sigkill_mid_burst_loses_nothing_and_sends_no_email_twice(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
    tmp_path: Path,
) -> None:
    settings = fault_settings(amqp_url, pg_url, queue_prefix, smtp)
    declare(settings)
    env = notifier_env(
        settings, NOTIFIER_SWEEPER__INTERVAL_S="1", NOTIFIER_SWEEPER__STALE_AFTER_S="15"
    )
    count = 600
    publish(settings, [sample_event(i, event_id=uuid.uuid4()) for i in range(count)])

    first = WorkerProcess(env, tmp_path / "worker.log").start()
    wait_until(lambda: len(smtp.messages) >= 60, timeout=60)
    first.kill9()
    with pg_database.engine.connect() as connection:
        in_flight = {
            str(r)
            for r in connection.execute(
                sa.select(deliveries.c.delivery_id).where(deliveries.c.status == "sending")
            ).scalars()
        }
        marked = {
            str(r)
            for r in connection.execute(
                sa.select(deliveries.c.delivery_id).where(
                    deliveries.c.status == "sending", deliveries.c.dispatch_provider.is_not(None)
                )
            ).scalars()
        }
    killed_after = len(smtp.messages)

    second = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        wait_until(lambda: all_final(pg_database, count), timeout=180, interval=0.5)
    finally:
        second.terminate()

    planned = email_ids(pg_database)
    received = received_ids(smtp)
    duplicates = {i for i, n in received.items() if n > 1}
    unknown = ids_with_status(pg_database, "unknown")
    # Lost: neither received nor held for an admin's decision.
    lost = planned - set(received) - unknown
    report(
        "sigkill",
        {
            "events": count,
            "deliveries": sum(statuses(pg_database).values()),
            "emails_planned": len(planned),
            "emails_before_kill": killed_after,
            "in_flight_at_kill": len(in_flight),
            "marked_at_kill": len(marked),
            "emails_received": sum(received.values()),
            "unknown": len(unknown),
            "duplicates": len(duplicates),
            "lost": len(lost),
        },
    )
    assert killed_after < len(planned)  # the kill really happened mid-burst
    assert lost == set()
    assert set(statuses(pg_database)) <= {"sent", "delivered", "unknown"}
    # Email's policy is hold (a Message-ID is no dedupe): a call that may have gone
    # through is held as unknown, never sent again; only calls marked at the kill are.
    assert duplicates == set()
    assert unknown <= marked | answered_maybe_sent(pg_database)


def test_rabbitmq_restart_mid_burst_loses_nothing_and_sends_nothing_twice(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
) -> None:
    settings = fault_settings(amqp_url, pg_url, queue_prefix, smtp)
    declare(settings)
    app = Notifier(settings)
    bodies = [sample_event(i, event_id=uuid.uuid4()) for i in range(500)]
    unconfirmed: list[dict[str, object]] = []
    with RunningWorker(app, threads=8):
        publisher = EventPublisher(settings.broker_url, settings.events)
        for index, body in enumerate(bodies):
            if index == 250:
                subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=60)
                subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
            try:
                publisher.publish(body)
            except Exception:
                unconfirmed.append(body)  # the publisher knows what was not confirmed
                publisher = reconnect(settings)
        # Publish again what was not confirmed, as a publisher must.
        for body in unconfirmed:
            publisher.publish(body)
        publisher.close()
        wait_until(lambda: all_final(pg_database, len(bodies)), timeout=180, interval=0.5)

    planned = email_ids(pg_database)
    received = received_ids(smtp)
    duplicates = {i for i, n in received.items() if n > 1}
    report(
        "rabbitmq-restart",
        {
            "events": len(bodies),
            "unconfirmed_republished": len(unconfirmed),
            "emails_planned": len(planned),
            "emails_received": sum(received.values()),
            "duplicates": len(duplicates),
            "lost": len(planned - set(received)),
        },
    )
    assert planned == set(received)
    assert duplicates == set()


def reconnect(settings: Settings) -> EventPublisher:
    def attempt() -> EventPublisher | None:
        try:
            return EventPublisher(settings.broker_url, settings.events)
        except Exception:
            return None

    publisher: EventPublisher = wait_until(attempt, timeout=60, interval=0.5)
    return publisher


def test_provider_outage_then_recovery_delivers_everything_with_retries_logged(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
) -> None:
    settings = fault_settings(amqp_url, pg_url, queue_prefix, smtp)
    settings = settings.model_copy(
        update={
            "providers": {
                "email": settings.provider_policy("email").model_copy(
                    update={"circuit_failures": 3, "circuit_open_s": 1.0}
                )
            }
        }
    )
    declare(settings)
    port = smtp.port
    smtp.stop()  # the mail server is down
    app = Notifier(settings)
    bodies = [sample_event(i, event_id=uuid.uuid4()) for i in range(40)]
    with RunningWorker(app, threads=4):
        publish(settings, bodies)
        wait_until(lambda: _failed_attempts(pg_database) >= 5, timeout=60)
        with SmtpCatcher(port=port) as back_up:
            wait_until(lambda: all_final(pg_database, len(bodies)), timeout=120, interval=0.5)
            received = received_ids(back_up)
    planned = email_ids(pg_database)
    report(
        "provider-outage",
        {
            "events": len(bodies),
            "emails_planned": len(planned),
            "failed_attempts_logged": _failed_attempts(pg_database),
            "emails_received": sum(received.values()),
            "lost": len(planned - set(received)),
        },
    )
    assert planned == set(received)
    assert max(received.values()) == 1
    assert set(statuses(pg_database)) <= {"sent", "delivered"}


def _failed_attempts(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).where(delivery_attempts.c.outcome == "temporary-failure")
            ).scalar_one()
        )


def test_rate_limit_is_respected_at_the_provider(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
) -> None:
    rate, burst = 20.0, 5
    settings = fault_settings(amqp_url, pg_url, queue_prefix, smtp)
    settings = settings.model_copy(
        update={
            "providers": {
                "email": settings.provider_policy("email").model_copy(
                    update={"rate_per_s": rate, "burst": burst}
                )
            }
        }
    )
    declare(settings)
    app = Notifier(settings)
    bodies = [sample_event(i, event_id=uuid.uuid4(), status=None) for i in range(80)]
    for body in bodies:
        body["dossier"]["status"] = "received"  # every event sends one email
    with RunningWorker(app, threads=8):
        publish(settings, bodies)
        wait_until(lambda: len(smtp.messages) == len(bodies), timeout=60)
    times = sorted(m.received_at for m in smtp.messages)
    elapsed = times[-1] - times[0]
    window = 2.0
    busiest = max(sum(1 for t in times if start <= t < start + window) for start in times)
    report(
        "rate-limit",
        {
            "emails": len(times),
            "configured_per_s": int(rate),
            "busiest_2s_window": busiest,
            "elapsed_ms": int(elapsed * 1000),
        },
    )
    # Tokens are taken before the send; arrival at the server adds the send's own
    # latency jitter, hence a 2 s window and a 10 % allowance. Unlimited, the 80
    # messages arrive within about 0.3 s.
    assert elapsed >= (len(bodies) - burst) / rate * 0.95
    assert busiest <= (rate * window + burst) * 1.1


def test_hostile_fields_are_neutralised_and_the_next_event_is_sent(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
) -> None:
    settings = fault_settings(amqp_url, pg_url, queue_prefix, smtp)
    declare(settings)
    app = Notifier(settings)
    hostile = sample_event(1, event_id=uuid.uuid4())
    hostile["dossier"]["status"] = "refused"
    hostile["applicant"]["name"] = "<script>alert(1)</script>{{ 7*7 }}{% raw %}"
    hostile["dossier"]["reason"] = "</td><img src=x onerror=alert(1)> {{ config }}"
    header_injection = sample_event(2, event_id=uuid.uuid4())
    header_injection["applicant"]["name"] = "An\r\nBcc: victim@example.com"
    bad_phone = sample_event(3, event_id=uuid.uuid4())
    bad_phone["applicant"]["contacts"]["email"] = "not-an-email"
    good = sample_event(4, event_id=uuid.uuid4())
    good["dossier"]["status"] = "received"
    with RunningWorker(app):
        publish(settings, [hostile, header_injection, bad_phone, good])
        wait_until(lambda: len(smtp.messages) == 2, timeout=30)
    by_id = {m["X-Notifier-Delivery-Id"]: m for m in smtp.messages}
    assert len(by_id) == 2
    hostile_mail = next(
        m for m in smtp.messages if "<script>" in m.get_body(("plain",)).get_content()
    )
    html = hostile_mail.get_body(("html",)).get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<img" not in html
    assert "{{ 7*7 }}" in hostile_mail.get_body(("plain",)).get_content()  # data, not code
    assert "49" not in hostile_mail.get_body(("plain",)).get_content()
    assert all(m["Bcc"] is None for m in smtp.messages)
    with pg_database.engine.connect() as connection:
        reasons = connection.execute(sa.text("SELECT reason FROM rejected_events")).scalars().all()
    assert any("applicant.name" in r and "single line" in r for r in reasons)
    assert any("contacts.email" in r for r in reasons)


def test_sigterm_finishes_in_flight_sends_and_leaves_nothing_half_done(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    with SmtpCatcher(latency_s=0.3) as slow:  # ~1.2 s a message: sends are in flight
        settings = fault_settings(amqp_url, pg_url, queue_prefix, slow)
        declare(settings)
        env = notifier_env(settings)
        env.pop("MALLOC_ARENA_MAX", None)
        bodies = [sample_event(i, event_id=uuid.uuid4()) for i in range(40)]
        for body in bodies:
            body["dossier"]["status"] = "received"
        publish(settings, bodies)
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        wait_until(lambda: len(slow.messages) >= 2, timeout=60)
        # Dramatiq's process manager and its worker process: two glibc arenas each.
        arenas = [e.get("MALLOC_ARENA_MAX") for e in worker.environments()]
        started = time.monotonic()
        exit_code = worker.terminate(timeout=60)
        stopped_in = time.monotonic() - started
        in_flight_after = statuses(pg_database)["sending"]
        sent_before_restart = len(slow.messages)

        again = WorkerProcess(env, tmp_path / "worker.log").start()
        try:
            wait_until(lambda: all_final(pg_database, len(bodies)), timeout=120, interval=0.5)
        finally:
            again.terminate()
        received = received_ids(slow)
    planned = email_ids(pg_database)
    report(
        "sigterm",
        {
            "events": len(bodies),
            "stopped_in_ms": int(stopped_in * 1000),
            "exit_code": exit_code,
            "left_sending": in_flight_after,
            "sent_before_restart": sent_before_restart,
            "emails_received": sum(received.values()),
            "duplicates": sum(1 for n in received.values() if n > 1),
            "lost": len(planned - set(received)),
        },
    )
    assert in_flight_after == 0  # every claimed send finished and was recorded
    assert stopped_in < settings.worker.send_timeout_s + 15
    assert len(arenas) >= 2
    assert set(arenas) == {"2"}
    assert planned == set(received)
    assert max(received.values()) == 1


def test_postgresql_restart_mid_run_the_worker_waits_and_goes_on(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
) -> None:
    settings = fault_settings(amqp_url, pg_url, queue_prefix, smtp)
    declare(settings)
    app = Notifier(settings)
    first = [sample_event(i, event_id=uuid.uuid4()) for i in range(30)]
    second = [sample_event(i, event_id=uuid.uuid4()) for i in range(30, 60)]
    cluster = sorted(os.listdir("/etc/postgresql"))[-1]
    with RunningWorker(app, threads=8):
        publish(settings, first)
        wait_until(lambda: len(smtp.messages) >= 5, timeout=60)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"],
            check=True,
            timeout=120,
        )
        publish(settings, second)
        wait_until(
            lambda: _reachable(pg_database) and all_final(pg_database, 60),
            timeout=180,
            interval=0.5,
        )
    planned = email_ids(pg_database)
    received = received_ids(smtp)
    report(
        "postgresql-restart",
        {
            "events": 60,
            "emails_planned": len(planned),
            "emails_received": sum(received.values()),
            "duplicates": sum(1 for n in received.values() if n > 1),
            "lost": len(planned - set(received)),
        },
    )
    assert planned == set(received)


def _reachable(database: Database) -> bool:
    try:
        with database.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.DBAPIError:
        return False
