"""Database failover under load: a PostgreSQL 15 primary and a synchronous standby,
started by this test on loopback (their own data directories, ports and socket
directory; the machine's own cluster on 5432 is never touched). A worker whose
database URL lists both hosts with target_session_attrs=read-write sends a burst; the
primary is killed with SIGKILL mid-burst (every one of its processes at once, as when
its machine dies) and the standby promoted. Counted at the SMTP simulator: no event
confirmed to the publisher is lost, no email arrives twice.

Skips, saying why, without PostgreSQL 15's server binaries or without root (the test
runs them as the ``postgres`` OS user through runuser; PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
import sqlalchemy as sa
from notifier_simulators.smtp import SmtpCatcher

from notifier.amqp import declare_topology
from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.publisher import EventPublisher
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.migrate import upgrade
from notifier.store.schema import deliveries, events
from notifier.web.api import create_api
from tests.support import REPO, ServedApi, notifier_env, rabbit_settings, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BIN = Path("/usr/lib/postgresql/15/bin")
FINAL = {"sent", "delivered", "permanent-failure", "unknown"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(*args: str, timeout: float = 120) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        check=True,
        capture_output=True,
        timeout=timeout,
    )


class PgPair:
    """A primary and a synchronous standby (application name ``standby1``) in a directory
    of their own; ``close`` kills whatever is left and removes the directory."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="notifier-pgha-"))
        self.base.chmod(0o755)
        shutil.chown(self.base, "postgres", "postgres")
        self.primary_dir = self.base / "primary"
        self.standby_dir = self.base / "standby"
        self.primary_port = _free_port()
        self.standby_port = _free_port()
        self.dirs = (self.primary_dir, self.standby_dir)

    def url(self, *ports: int, database: str = "notifier") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        return (
            f"postgresql://postgres@{hosts}/{database}"
            "?target_session_attrs=read-write&connect_timeout=2"
        )

    @property
    def failover_url(self) -> str:
        return self.url(self.primary_port, self.standby_port)

    def start(self) -> PgPair:
        _as_postgres(
            str(BIN / "initdb"),
            "-D",
            str(self.primary_dir),
            "-U",
            "postgres",
            "-A",
            "trust",  # a throwaway cluster on loopback; production uses scram (deploy/)
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self._configure(
            self.primary_dir,
            port=self.primary_port,
            wal_level="replica",
            max_wal_senders="4",
            synchronous_commit="on",
            synchronous_standby_names="'standby1'",
        )
        self._pg_ctl(self.primary_dir, "start")
        _as_postgres(
            str(BIN / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary_port),
            "-U",
            "postgres",
            "-D",
            str(self.standby_dir),
            "-R",
            "-X",
            "stream",
            "--no-sync",
        )
        self._configure(
            self.standby_dir,
            port=self.standby_port,
            primary_conninfo=(
                f"'host=127.0.0.1 port={self.primary_port} user=postgres application_name=standby1'"
            ),
            # Once promoted it is alone: with a synchronous standby still required, every
            # commit would wait for one that does not exist (docs/deployment.md).
            synchronous_standby_names="''",
        )
        self._pg_ctl(self.standby_dir, "start")
        primary = sa.create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{self.primary_port}/postgres",
            isolation_level="AUTOCOMMIT",
        )
        try:
            wait_until(lambda: self._sync_state(primary) == "sync", timeout=60, interval=0.2)
            with primary.connect() as connection:
                connection.execute(sa.text("CREATE DATABASE notifier"))
        finally:
            primary.dispose()
        return self

    @staticmethod
    def _sync_state(engine: sa.Engine) -> str | None:
        with engine.connect() as connection:
            return connection.execute(
                sa.text("SELECT sync_state FROM pg_stat_replication WHERE application_name = :n"),
                {"n": "standby1"},
            ).scalar_one_or_none()

    def _configure(self, data_dir: Path, **settings: str) -> None:
        # fsync off: the test kills processes, not the machine, so the OS keeps what was
        # written; it spares a loaded test machine the flushes.
        common = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
        }
        with (data_dir / "postgresql.auto.conf").open("a") as conf:
            for key, value in {**common, **settings}.items():
                conf.write(f"{key} = {value}\n")

    def _pg_ctl(self, data_dir: Path, *action: str) -> None:
        log = self.base / f"{data_dir.name}.log"
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(data_dir), "-l", str(log), "-w", *action)

    def kill_primary(self) -> int:
        """SIGKILL to the primary's postmaster and every process it started at once."""
        pid = _postmaster_pid(self.primary_dir)
        assert pid is not None
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        return len(victims)

    def promote_standby(self) -> None:
        self._pg_ctl(self.standby_dir, "promote")

    def close(self) -> None:
        for data_dir in self.dirs:
            pid = _postmaster_pid(data_dir)
            if pid is not None:
                for victim in [pid, *_children(pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the command name (in parentheses, which may hold spaces).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


@pytest.fixture
def pg_pair() -> Iterator[PgPair]:
    if not (BIN / "initdb").is_file() or shutil.which("runuser") is None:
        pytest.skip(f"PostgreSQL 15 server binaries ({BIN}) or runuser not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root to run PostgreSQL's binaries as the postgres user")
    pair = PgPair()
    try:
        yield pair.start()
    finally:
        pair.close()


def _quietly(check: Callable[[], Any]) -> Any:
    """``check()``, or False while the database is switching over."""
    try:
        return check()
    except sa.exc.DBAPIError:
        return False


def test_primary_killed_mid_burst_and_standby_promoted_loses_no_event_and_sends_no_email_twice(
    amqp_url: str, queue_prefix: str, pg_pair: PgPair, tmp_path: Path
) -> None:
    first_burst, second_burst, http_events = 400, 150, 50
    with SmtpCatcher() as smtp:
        settings = rabbit_settings(
            amqp_url,
            pg_pair.failover_url,
            queue_prefix,
            adapters={"email": {"port": smtp.port, "pool_size": 4, "timeout_s": 3}},
        )
        database = Database(settings.database_url)
        upgrade(database)
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        declare_topology(connection.channel(), settings.events)
        connection.close()
        env = notifier_env(
            settings, NOTIFIER_SWEEPER__INTERVAL_S="1", NOTIFIER_SWEEPER__STALE_AFTER_S="15"
        )
        key = ApiKeys(database).create("motcua-http", ["publish"], [])
        api_app = Notifier(settings)
        worker = _start_worker(env, tmp_path / "worker.log")
        confirmed = 0
        try:
            with ServedApi(create_api(api_app)) as api:
                confirmed += _publish(settings, first_burst)
                wait_until(lambda: len(smtp.messages) >= 60, timeout=120, interval=0.1)
                sent_before_kill = len(smtp.messages)
                killed = pg_pair.kill_primary()
                # The outage: events keep coming over AMQP (RabbitMQ is up) and over HTTP
                # (the API cannot check keys until the promotion: its publisher retries).
                http = _HttpPublisher(api.base_url, key, http_events)
                http.start()
                confirmed += _publish(settings, second_burst)
                time.sleep(2)
                promoted_at = len(smtp.messages)
                pg_pair.promote_standby()
                http.join(timeout=180)
                assert not http.is_alive()
            confirmed += len(http.accepted)
            wait_until(
                lambda: _quietly(lambda: _all_final(database, confirmed)),
                timeout=300,
                interval=0.5,
            )
        finally:
            api_app.close()
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        received = Counter(str(m["X-Notifier-Delivery-Id"]) for m in smtp.messages)

    with database.engine.connect() as connection:
        recorded_events = connection.execute(
            sa.select(sa.func.count()).select_from(events)
        ).scalar_one()
        rows = connection.execute(
            sa.select(deliveries.c.delivery_id, deliveries.c.channel, deliveries.c.status)
        ).all()
        server_port = connection.execute(sa.text("SELECT inet_server_port()")).scalar_one()
    database.dispose()
    planned = {str(r.delivery_id) for r in rows if r.channel == "email"}
    unknown = {str(r.delivery_id) for r in rows if r.status == "unknown"}
    duplicates = {i for i, n in received.items() if n > 1}
    lost = planned - set(received) - unknown
    line = (
        f"postgresql-failover: events_confirmed={confirmed} (http_202={len(http.accepted)}, "
        f"http_refused_during_switch={dict(http.refused)}), events_recorded={recorded_events}, "
        f"primary_processes_killed={killed}, emails_before_kill={sent_before_kill}, "
        f"emails_at_promotion={promoted_at}, emails_planned={len(planned)}, "
        f"emails_received={sum(received.values())}, unknown={len(unknown)}, "
        f"duplicates={len(duplicates)}, lost={len(lost)}"
    )
    print(line)
    out = REPO / "test-artifacts" / "faults.txt"
    out.parent.mkdir(exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")

    assert server_port == pg_pair.standby_port  # the worker is on the promoted standby
    assert sent_before_kill < len(planned)  # the kill really came mid-burst
    assert len(http.accepted) == http_events  # the API came back after the promotion
    assert set(http.refused) <= {503}  # during the switch: "send again", never a 500
    assert recorded_events == confirmed  # no event confirmed or answered 202 was lost
    assert lost == set()
    # Email's policy is hold: a send whose outcome the outage hid is held as unknown for
    # an admin, never sent again.
    assert duplicates == set()


class _HttpPublisher(threading.Thread):
    """Posts events to the API one by one, each again until it is answered 202, as a
    publisher must; counts the answers that were not 202."""

    def __init__(self, base_url: str, key: str, count: int) -> None:
        super().__init__(daemon=True)
        self.base_url, self.key, self.count = base_url, key, count
        self.accepted: set[str] = set()
        self.refused: Counter[int | str] = Counter()  # answers other than 202, by status

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        deadline = time.monotonic() + 170
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10) as client:
            for index in range(self.count):
                body = sample_event(10_000 + index, event_id=uuid.uuid4())
                while time.monotonic() < deadline:
                    try:
                        answer = client.post("/v1/events", json=body)
                    except httpx.HTTPError as exc:
                        self.refused[type(exc).__name__] += 1
                    else:
                        if answer.status_code == 202:
                            self.accepted.add(str(body["event_id"]))
                            break
                        self.refused[answer.status_code] += 1
                    time.sleep(0.2)


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "notifier.cli.main", "worker", "--processes", "1"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _publish(settings: Any, count: int) -> int:
    """Publish ``count`` events with confirms; how many the broker confirmed."""
    bodies = [sample_event(i, event_id=uuid.uuid4()) for i in range(count)]
    with EventPublisher(settings.broker_url, settings.events) as publisher:
        report = publisher.publish_many(bodies)
    assert report.failed == []
    return count


def _all_final(database: Database, expected_events: int) -> bool:
    with database.engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
        found = set(connection.execute(sa.select(deliveries.c.status).distinct()).scalars())
    return count == expected_events and bool(found) and found <= FINAL
