"""The benchmark's surroundings: a fresh PostgreSQL database and RabbitMQ vhost, the
provider simulators' process, `notifier worker` processes, and the delivery log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import psycopg
import sqlalchemy as sa
from pika.exceptions import ChannelClosedByBroker

from benchmarks.procstat import children, status_kb
from notifier.settings import Settings, load_settings
from notifier.store import Database
from notifier.store.migrate import upgrade

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("NOTIFIER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_HOST = os.environ.get("NOTIFIER_BENCH_AMQP_HOST", "127.0.0.1:5672")
# Tables emptied between runs; provider tokens (Zalo's rotating refresh token) stay.
_RUN_TABLES = (
    "delivery_attempts",
    "inbox_notifications",
    "deliveries",
    "rejected_events",
    "events",
)


# -- PostgreSQL and RabbitMQ ---------------------------------------------------------


@contextmanager
def fresh_database() -> Iterator[tuple[str, str]]:
    """A new, migrated database: (SQLAlchemy URL, its name). Dropped afterwards."""
    name = f"notifier_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    try:
        database = Database(url)
        upgrade(database)
        with database.begin() as connection:
            # The bare reference's delivery log: one row per delivery, like notifier's.
            connection.execute(
                sa.text(
                    "CREATE TABLE bare_deliveries (delivery_id uuid PRIMARY KEY, "
                    "event_id uuid NOT NULL, channel text NOT NULL, recipient text NOT NULL, "
                    "content text, status text NOT NULL, created_at timestamptz NOT NULL)"
                )
            )
        database.dispose()
        yield url, name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def fresh_vhost() -> Iterator[str]:
    """A new RabbitMQ vhost (its queues go with it): the AMQP URL."""
    if shutil.which("rabbitmqctl") is None:
        raise SystemExit("rabbitmqctl not found: RabbitMQ must be installed and running")
    vhost = f"notifier-bench-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def clear_run_tables(database: Database) -> None:
    with database.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {', '.join(_RUN_TABLES)} CASCADE"))
        connection.execute(sa.text("TRUNCATE bare_deliveries"))


class Queues:
    """Passive looks at queues (depth, consumers) on one connection."""

    def __init__(self, amqp_url: str) -> None:
        parameters = pika.URLParameters(amqp_url)
        parameters.heartbeat = 0  # idle for minutes while a run goes on
        self.connection = pika.BlockingConnection(parameters)
        self.channel = self.connection.channel()

    def look(self, queue: str) -> tuple[int, int] | None:
        """(messages ready, consumers), or None if the queue does not exist."""
        try:
            method = self.channel.queue_declare(queue, passive=True).method
        except ChannelClosedByBroker:
            self.channel = self.connection.channel()
            return None
        return method.message_count, method.consumer_count

    @property
    def server_properties(self) -> dict[str, Any]:
        properties: dict[str, Any] = self.connection._impl.server_properties
        return properties

    def purge(self, queue: str) -> None:
        if self.look(queue) is not None:
            self.channel.queue_purge(queue)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


# -- the simulators' process -----------------------------------------------------------


class ProvidersProcess:
    """benchmarks/providers.py: SMTP, eSMS, SpeedSMS and Zalo simulators."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "benchmarks" / "providers.py")],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.process.stdout is not None
        self.info: dict[str, Any] = json.loads(self.process.stdout.readline())
        self.pid = self.process.pid

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def dump(self) -> dict[str, list[list[Any]]]:
        """What the simulators accepted since the last dump (then forgotten)."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "accepted.json"
            self._ask(f"dump {path}")
            records: dict[str, list[list[Any]]] = json.loads(path.read_text())
            return records

    def access_token(self) -> str:
        return str(self._ask("token")["access_token"])

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- notifier settings and worker processes ---------------------------------------------


def bench_settings(amqp_url: str, database_url: str, overrides: dict[str, Any]) -> Settings:
    return load_settings(
        broker_url=amqp_url,
        database_url=database_url,
        config_dir=REPO / "config",
        log_format="json",
        log_level="WARNING",
        events={"exchange": "bench.events", "queue": "bench.events.inbound"},
        worker={"queue_prefix": "bench", "send_timeout_s": 10},
        # The benchmark sends to a few sample phones at any hour: quiet hours and caps
        # would hold most of it (they are measured by the tests, not here).
        choice={"quiet_hours": False, "frequency_caps": False},
        **overrides,
    )


def worker_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    """The environment of `notifier worker` with ``settings`` (what the benchmark varies)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        {
            "NOTIFIER_BROKER_URL": settings.broker_url,
            "NOTIFIER_DATABASE_URL": settings.database_url,
            "NOTIFIER_CONFIG_DIR": str(settings.config_dir),
            "NOTIFIER_LOG_FORMAT": settings.log_format,
            "NOTIFIER_LOG_LEVEL": settings.log_level,
            "NOTIFIER_EVENTS__EXCHANGE": settings.events.exchange,
            "NOTIFIER_EVENTS__QUEUE": settings.events.queue,
            "NOTIFIER_WORKER__QUEUE_PREFIX": settings.worker.queue_prefix,
            "NOTIFIER_WORKER__SEND_TIMEOUT_S": str(settings.worker.send_timeout_s),
            "NOTIFIER_CHOICE__QUIET_HOURS": str(settings.choice.quiet_hours).lower(),
            "NOTIFIER_CHOICE__FREQUENCY_CAPS": str(settings.choice.frequency_caps).lower(),
        }
    )
    for channel, config in settings.channels.items():
        env[f"NOTIFIER_CHANNELS__{channel.upper()}__PROVIDERS"] = json.dumps(config.providers)
    for name, values in settings.adapters.items():
        for key, value in values.items():
            env[f"NOTIFIER_ADAPTERS__{name.upper()}__{key.upper()}"] = str(value)
    env.update(extra)
    return env


@dataclass
class WorkerProcesses:
    """`notifier worker --processes P --threads T` in its own process group."""

    env: dict[str, str]
    processes: int
    threads: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcesses:
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
                    str(self.threads),
                ],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """Dramatiq's worker processes: the children of its main process that run the
        worker threads (not its fork processes, e.g. the Prometheus exporter)."""
        return [
            pid
            for pid in children(self.pid)
            if (status_kb(pid, "Threads") or 0) >= self.threads
        ]

    def wait_ready(self, queues: Queues, names: list[str], timeout: float = 60) -> None:
        """Until every queue in ``names`` has a consumer in each worker process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"notifier worker exited; see {self.log}")
            looks = [queues.look(name) for name in names]
            if all(look is not None and look[1] >= self.processes for look in looks):
                return
            time.sleep(0.2)
        raise TimeoutError(f"workers not consuming within {timeout:g}s; see {self.log}")

    def stop(self, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# -- the delivery log ------------------------------------------------------------------


def wait_for(
    check: Callable[[], tuple[bool, int]], *, stall_s: float, interval: float = 0.5
) -> None:
    """Poll ``check`` -> (done, progress) until done; fail if progress stalls."""
    last, since = -1, time.monotonic()
    while True:
        done, progress = check()
        if done:
            return
        if progress != last:
            last, since = progress, time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise TimeoutError(f"no progress for {stall_s:g}s (at {progress})")
        time.sleep(interval)


class Progress:
    """Whether a run is done, cheaply (it is polled during the measurement, and its
    queries are PostgreSQL CPU): events are counted until all are in, then only the
    deliveries not yet final (a few rows, by the status index)."""

    def __init__(self, database: Database, events: int) -> None:
        self.database = database
        self.events = events
        self.ingested = 0

    def __call__(self) -> tuple[bool, int]:
        with self.database.engine.connect() as connection:
            if self.ingested < self.events:
                self.ingested = int(
                    connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
                )
                if self.ingested < self.events:
                    return False, self.ingested
            waiting = int(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM deliveries "
                        "WHERE status IN ('queued', 'sending', 'temporary-failure')"
                    )
                ).scalar_one()
            )
        return waiting == 0, self.ingested * 1000 - waiting


def delivery_rows(database: Database) -> list[tuple[str, str, str, str, float]]:
    """(delivery id, event id, channel, status, updated_at epoch) of every delivery."""
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT delivery_id::text, event_id::text, channel, status, "
                "extract(epoch FROM updated_at)::float8 FROM deliveries"
            )
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def stage_times(database: Database) -> dict[str, tuple[float, float]]:
    """delivery id → (its event stored, its first send started), epoch seconds."""
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT d.delivery_id::text, extract(epoch FROM e.received_at)::float8, "
                "extract(epoch FROM min(a.started_at))::float8 "
                "FROM deliveries d JOIN events e USING (event_id) "
                "JOIN delivery_attempts a USING (delivery_id) "
                "GROUP BY d.delivery_id, e.received_at"
            )
        ).all()
    return {row[0]: (row[1], row[2]) for row in rows}


def inbox_times(database: Database) -> dict[str, float]:
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT delivery_id::text, extract(epoch FROM created_at)::float8 "
                "FROM inbox_notifications"
            )
        ).all()
    return {row[0]: row[1] for row in rows}
