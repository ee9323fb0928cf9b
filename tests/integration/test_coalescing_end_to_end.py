"""Coalescing end to end (issue 19, "how it is checked"), on PostgreSQL against the local
SMTP, eSMS and Zalo servers, with a controlled clock: received, processing and result
ready within one window give one SMS and one Zalo message (the result's), every email
and portal message, and superseded rows linked to the one sent; a worker killed with
SIGKILL inside the window, then a new one: still exactly one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import time_machine
from notifier_simulators.local import LocalProviders

from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.schema import deliveries, inbox_notifications
from tests.support import REPO, RunningWorker, make_settings, wait_until

pytestmark = pytest.mark.integration

WINDOW = 120
STATUSES = ("received", "processing", "result_ready")


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as local:
        yield local


def config_dir(root: Path) -> Path:
    """The shipped config, with every channel for the three statuses and 2-minute
    windows on SMS and Zalo (result_ready not marked always: it waits like the rest)."""
    config = root / "config"
    shutil.copytree(REPO / "config", config, dirs_exist_ok=True)
    routing = (config / "routing.toml").read_text("utf-8")
    for status in STATUSES:
        routing = routing.replace(
            next(line for line in routing.splitlines() if line.startswith(f"{status} ")),
            f'{status} = ["portal", "email", "zalo", "sms"]',
        )
    routing = routing.replace("window_s = {}", f"window_s = {{ sms = {WINDOW}, zalo = {WINDOW} }}")
    routing = routing.replace('"stopped", "result_ready", ', '"stopped", ')
    (config / "routing.toml").write_text(routing, "utf-8")
    return config


def overrides(root: Path, database: Database, providers: LocalProviders) -> dict[str, Any]:
    return {
        "config_dir": str(config_dir(root)),
        "database_url": database.url,
        # About coalescing, at any hour: the citizen's night (quiet hours) would hold the
        # SMS and Zalo messages for 7:00 instead (the first worker loads these as they are).
        "choice": {"quiet_hours": False, "frequency_caps": False},
        **providers.settings_overrides(),
    }


def news(status: str, at: datetime) -> dict[str, Any]:
    event = sample_event(3, event_id=uuid.uuid4())
    event["dossier"]["status"] = status
    event["occurred_at"] = at.isoformat()
    event["applicant"]["language"] = "vi"
    return event


def submit(app: Notifier, event: dict[str, Any]) -> None:
    app.submit(json.dumps(event, ensure_ascii=False).encode(), source="test")


def rows(database: Database, channel: str) -> list[dict[str, Any]]:
    d = deliveries.c
    with database.engine.connect() as connection:
        found = connection.execute(
            sa.select(deliveries).where(d.channel == channel).order_by(d.created_at)
        )
        return [dict(r._mapping) for r in found]


def inbox_count(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).select_from(inbox_notifications)
            ).scalar_one()
        )


def assert_one_message_of_the_result(database: Database, providers: LocalProviders) -> None:
    [sms] = providers.esms.messages
    assert "ket qua" in sms.content.lower()  # "kết quả": the result's message, unaccented
    [zns] = providers.zalo.messages
    for channel, sent_id in (("sms", sms.request_id), ("zalo", zns.tracking_id)):
        found = rows(database, channel)
        assert [r["event_status"] for r in found] == list(STATUSES)
        kept = found[-1]
        assert str(kept["delivery_id"]) == sent_id
        assert kept["status"] == "sent"
        for older in found[:-1]:
            assert older["status"] == "superseded"
            assert older["superseded_by"] == kept["delivery_id"]


def test_three_statuses_in_one_window_send_one_sms_and_one_zalo_and_every_email(
    tmp_path: Path, pg_database: Database, providers: LocalProviders
) -> None:
    app = Notifier(make_settings(**overrides(tmp_path, pg_database, providers)))
    providers.seed_tokens(app.tokens)
    start = datetime.now(UTC).replace(microsecond=0)
    with time_machine.travel(start, tick=True) as clock, RunningWorker(app):
        for count, (offset, status) in enumerate(zip((0, 20, 40), STATUSES, strict=True), 1):
            clock.move_to(start + timedelta(seconds=offset))
            submit(app, news(status, start + timedelta(seconds=offset)))
            wait_until(lambda n=count: len(rows(pg_database, "sms")) == n)  # type: ignore[misc]
        # Email and the portal have no window: all three of each go at once.
        providers.smtp.wait_for(3, timeout=20)
        wait_until(lambda: inbox_count(pg_database) == 3)
        assert providers.esms.messages == []
        assert providers.zalo.messages == []
        clock.move_to(start + timedelta(seconds=WINDOW - 1))
        assert app.sweeper.release_due() == 0
        # Due a window after the first status was recorded (the clock ticks on).
        clock.move_to(start + timedelta(seconds=WINDOW + 2))
        assert app.sweeper.release_due() == 2  # one SMS, one Zalo message
        wait_until(lambda: providers.esms.messages and providers.zalo.messages)
        wait_until(lambda: rows(pg_database, "sms")[-1]["status"] == "sent")
        wait_until(lambda: rows(pg_database, "zalo")[-1]["status"] == "sent")
        assert app.sweeper.release_due() == 0
    assert_one_message_of_the_result(pg_database, providers)
    assert len(providers.smtp.messages) == 3


# A worker process that takes the first two statuses, then is killed inside the window.
_FIRST_WORKER = """
import json, sys
from notifier.app import Notifier
from notifier.settings import load_settings
app = Notifier(load_settings(**json.loads(sys.argv[1])))
for raw in json.loads(sys.argv[2]):
    result = app.ingest.handle(raw, source="test")
    assert result.outcome == "accepted", result.reason
print("held", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_worker_killed_inside_the_window_and_a_new_one_still_send_exactly_one(
    tmp_path: Path, pg_database: Database, providers: LocalProviders
) -> None:
    settings = overrides(tmp_path, pg_database, providers)
    start = datetime.now(UTC).replace(microsecond=0)
    first_two = [
        json.dumps(news(status, start + timedelta(seconds=offset)), ensure_ascii=False)
        for offset, status in ((0, "received"), (20, "processing"))
    ]
    worker = subprocess.Popen(
        [sys.executable, "-c", _FIRST_WORKER, json.dumps(settings), json.dumps(first_two)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    try:
        assert worker.stdout is not None
        # Its log lines come first; "held" once both statuses are recorded.
        for line in worker.stdout:
            if line.strip() == "held":
                break
        else:
            raise AssertionError("the first worker ended before holding anything")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    assert {r["status"] for r in rows(pg_database, "sms")} == {"scheduled", "superseded"}

    app = Notifier(make_settings(**settings))
    providers.seed_tokens(app.tokens)
    with time_machine.travel(datetime.now(UTC), tick=True) as clock, RunningWorker(app):
        # Still inside the window: the result comes, to the restarted service.
        submit(app, news("result_ready", start + timedelta(seconds=40)))
        wait_until(lambda: len(rows(pg_database, "sms")) == 3)
        # Past the window (and past the stale sweep's horizon, for the email and portal
        # messages the killed worker had recorded but never sent).
        clock.move_to(start + timedelta(seconds=app.settings.sweeper.stale_after_s + 60))
        app.sweeper.sweep()
        wait_until(lambda: providers.esms.messages and providers.zalo.messages)
        wait_until(lambda: rows(pg_database, "sms")[-1]["status"] == "sent")
        wait_until(lambda: rows(pg_database, "zalo")[-1]["status"] == "sent")
        providers.smtp.wait_for(3, timeout=20)
        assert app.sweeper.sweep() == 0
    assert_one_message_of_the_result(pg_database, providers)
