"""Signed callbacks end to end on the real RabbitMQ and PostgreSQL, to a real local receiver
(uvicorn on loopback, allowed by the settings) that verifies every signature with the
Standard Webhooks reference verifier: every status of a burst arrives; a receiver that
is down, then throttling (429 and 503 with Retry-After in both forms), then back gets
each callback, none lost, repeats only of the same id; a worker killed with SIGKILL
during callbacks loses none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pika
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from notifier.app import Notifier
from notifier.cli.main import main
from notifier.settings import Settings
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.callbacks import CallbackStatus
from notifier.store.schema import callback_deliveries
from tests.callback_receiver import CallbackReceiver
from tests.support import REPO, RunningWorker, notifier_env, rabbit_settings, wait_until

pytestmark = pytest.mark.integration


def _callback_settings(prefix: str) -> dict[str, Any]:
    return {
        "exchange": f"{prefix}.statuses",
        "queue": f"{prefix}.callbacks",
        "allowed_networks": ["127.0.0.1/32"],
        "allow_http": True,
        "min_backoff_s": 0.1,
        "max_backoff_s": 0.3,
        "poll_interval_s": 0.05,
        "timeout_s": 1,
        "batch": 4,
        "concurrency": 2,
    }


@pytest.fixture
def settings(amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str) -> Settings:
    return rabbit_settings(
        amqp_url, pg_url, queue_prefix, callbacks=_callback_settings(queue_prefix)
    )


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    served = CallbackReceiver([])
    yield served
    served.down()


def callback_env(settings: Settings) -> dict[str, str]:
    """The environment of a `notifier` process with these settings, callbacks included."""
    return notifier_env(
        settings,
        **{
            f"NOTIFIER_CALLBACKS__{key.upper()}": (
                json.dumps(value) if isinstance(value, list) else str(value)
            )
            for key, value in settings.callbacks.model_dump().items()
        },
    )


def _register(settings: Settings, receiver: CallbackReceiver) -> None:
    """A publisher for agency H29 and its callback, set as an operator does (the CLI
    prints the secret once; the publisher's receiver verifies with it)."""
    ApiKeys(Database(settings.database_url)).create("mot-cua-h29", ["publish"], ["H29"])
    env = callback_env(settings)
    setup = CliRunner().invoke(main, ["broker", "setup"], env=env)
    assert setup.exit_code == 0, setup.output
    result = CliRunner().invoke(
        main, ["callbacks", "set", "mot-cua-h29", "--url", receiver.url], env=env
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.splitlines()[1]
    assert secret.startswith("whsec_")
    receiver.trust(secret)


def status_message(n: int, agency: str | None = "H29", sequence: int = 1) -> dict[str, Any]:
    """A status message of the documented shape (the status outbox's contract)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "schema": "notifier.status.v1",
        "id": f"st-{n:04d}",
        "type": "delivery.delivered",
        "occurred_at": now,
        "agency": agency,
        "event_id": f"ev-{n}",
        "dossier_code": f"{agency}-261203-{n:04d}",
        "sequence": sequence,
        "delivery": {
            "id": f"dl-{n}",
            "channel": "sms",
            "provider": "esms",
            "status": "delivered",
            "attempts": 1,
            "recipient": "09******89",
            "fallback_of": None,
            "created_at": now,
            "updated_at": now,
        },
        "rejection": None,
    }


def publish_statuses(settings: Settings, messages: list[dict[str, Any]] | list[bytes]) -> None:
    """Publish as the status outbox does: topic exchange, durable, confirms, persistent."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(settings.callbacks.exchange, exchange_type="topic", durable=True)
        channel.confirm_delivery()
        for message in messages:
            body = message if isinstance(message, bytes) else json.dumps(message).encode()
            meta = {} if isinstance(message, bytes) else message
            channel.basic_publish(
                settings.callbacks.exchange,
                f"status.{meta.get('agency') or 'none'}.{meta.get('type', 'x')}",
                body,
                pika.BasicProperties(
                    message_id=str(meta.get("id", "")),
                    content_type="application/json",
                    type=str(meta.get("type", "")),
                    delivery_mode=2,
                ),
                mandatory=True,
            )
    finally:
        connection.close()


def _rows(settings: Settings) -> list[sa.Row[tuple[object, ...]]]:
    database = Database(settings.database_url)
    try:
        with database.engine.connect() as connection:
            return list(connection.execute(sa.select(callback_deliveries)))
    finally:
        database.dispose()


def _queue_depth(settings: Settings, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


def test_every_status_of_a_burst_reaches_its_publisher_signed_and_no_other_agencys(
    settings: Settings, receiver: CallbackReceiver
) -> None:
    receiver.up()
    _register(settings, receiver)
    ours = [status_message(n, "H29", sequence=n) for n in range(30)]
    theirs = [status_message(100 + n, "H30") for n in range(10)]
    app = Notifier(settings)
    with RunningWorker(app):
        publish_statuses(settings, ours + theirs)
        publish_statuses(settings, [b"not json", b'{"schema": "other"}'])
        wait_until(lambda: len(receiver.received.bodies) >= 30, timeout=60)
        wait_until(lambda: _queue_depth(settings, f"{settings.callbacks.queue}.invalid") == 2)
    assert receiver.received.bad_signatures == 0
    assert receiver.received.bodies == {m["id"]: m for m in ours}
    assert all(count == 1 for count in receiver.received.tries.values())
    assert {h["webhook-id"] for h in receiver.received.headers} == {m["id"] for m in ours}
    assert all(
        h["notifier-sequence"] == str(receiver.received.bodies[h["webhook-id"]]["sequence"])
        for h in receiver.received.headers
    )
    listed = CliRunner().invoke(main, ["callbacks", "list", "--json"], env=callback_env(settings))
    (health,) = json.loads(listed.stdout)
    assert (health["backlog"], health["dead_letters"], health["delivered"]) == (0, 0, 30)
    assert health["last_success_at"] is not None


def _pending_wait_after(settings: Settings, status_code: int) -> timedelta | None:
    """How long after its last try a callback refused with ``status_code`` is due."""
    for row in _rows(settings):
        if row.status == CallbackStatus.PENDING.value and row.last_status_code == status_code:
            return row.due_at - row.updated_at  # type: ignore[no-any-return]
    return None


def test_a_receiver_down_then_throttling_then_back_gets_every_callback_none_lost(
    settings: Settings, receiver: CallbackReceiver
) -> None:
    _register(settings, receiver)  # the receiver is down: not listening
    messages = [status_message(n, "H29", sequence=n) for n in range(20)]
    app = Notifier(settings)
    with RunningWorker(app):
        publish_statuses(settings, messages)
        wait_until(
            lambda: len(rows := _rows(settings)) == 20 and all(r.attempts >= 2 for r in rows),
            timeout=60,
        )
        assert all("unreachable" in str(r.last_error) for r in _rows(settings))

        # Up, but throttling: Retry-After in seconds; our own backoff is at most 0.3 s,
        # so a wait of a second or more is the receiver's.
        receiver.answer(429, "2")
        receiver.up()
        wait = wait_until(lambda: _pending_wait_after(settings, 429), timeout=30)
        assert wait >= timedelta(seconds=2)
        # Then overloaded, with Retry-After as an HTTP date.
        until = datetime.now(UTC) + timedelta(seconds=3)
        receiver.answer(503, format_datetime(until, usegmt=True))
        wait = wait_until(lambda: _pending_wait_after(settings, 503), timeout=30)
        assert wait >= timedelta(seconds=1)
        # The status outbox is at-least-once: a repeat of a message adds no callback.
        publish_statuses(settings, messages[:5])
        receiver.answer(200)
        wait_until(lambda: len(receiver.received.bodies) == 20, timeout=60)
        wait_until(lambda: all(r.status == CallbackStatus.DELIVERED.value for r in _rows(settings)))
    assert receiver.received.bad_signatures == 0
    assert receiver.received.refused > 0
    assert receiver.received.bodies == {m["id"]: m for m in messages}
    assert len(_rows(settings)) == 20
    # Accepted once each: no callback was delivered twice (none was in flight twice).
    assert all(count == 1 for count in receiver.received.tries.values())


WORKER_ARGS = ("--processes", "1", "--threads", "2")


class WorkerProcess:
    """`notifier worker` in its own process group, so SIGKILL takes all its processes."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "notifier.cli.main", "worker", *WORKER_ARGS],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def test_a_worker_killed_during_callbacks_loses_none(
    settings: Settings, receiver: CallbackReceiver, tmp_path: Path
) -> None:
    receiver.delay_s = 0.2  # slow enough that callbacks are in flight at the kill
    receiver.up()
    _register(settings, receiver)
    messages = [status_message(n, "H29", sequence=n) for n in range(40)]
    env = callback_env(settings)
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    second = WorkerProcess(env, tmp_path / "worker2.log")
    try:
        publish_statuses(settings, messages)
        wait_until(lambda: len(receiver.received.bodies) >= 6, timeout=60)
        first.kill9()
        delivered_at_kill = len(receiver.received.bodies)
        assert delivered_at_kill < 40  # the kill came mid-burst
        second.start()
        wait_until(lambda: len(receiver.received.bodies) == 40, timeout=120)
        wait_until(
            lambda: all(r.status == CallbackStatus.DELIVERED.value for r in _rows(settings)),
            timeout=30,
        )
    finally:
        first.stop()
        second.stop()
    assert receiver.received.bad_signatures == 0
    assert receiver.received.bodies == {m["id"]: m for m in messages}
    # Sent again only what the killed sender had claimed: at most one batch of its
    # process (``batch`` callbacks), each with the same webhook-id.
    repeats = sum(receiver.received.tries.values()) - 40
    assert 0 <= repeats <= settings.callbacks.batch
