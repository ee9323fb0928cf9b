"""Retention (issue 9, point 4): after the period, with the clock controlled by the test,
bodies and contacts are gone and counts, statuses and search hashes remain. On SQLite
and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from notifier.app import Notifier
from notifier.cli.main import main
from notifier.events import EventRejected, Status
from notifier.masking import recipient_hash
from notifier.ops.retention import Retention, RetentionJob, add_retention_job
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.publishers import Submitter
from notifier.store.schema import (
    deliveries,
    events,
    inbox_notifications,
    receipt_nonces,
    rejected_events,
    utcnow,
)
from tests.support import REPO, make_settings, run_on_terminal, wait_until

EMAIL = "minh.khai@example.vn"
PHONE = "0901888484"


@pytest.fixture
def app(database: Database) -> Any:
    app = Notifier(make_settings(database_url=database.url))
    yield app
    app.close()


def ingest(app: Notifier, **contacts: Any) -> dict[str, Any]:
    event = sample_event(
        1,
        status=Status.SUBMITTED,  # portal and email
        event_id=uuid.uuid4(),
        contacts=contacts or {"email": EMAIL, "phone": PHONE, "portal_account_id": "acc-1"},
    )
    result = app.ingest.handle(json.dumps(event, ensure_ascii=False), source="test")
    assert result.outcome == "accepted", result
    return event


def snapshot(database: Database) -> dict[str, list[dict[str, Any]]]:
    with database.engine.connect() as connection:
        return {
            table.name: [dict(r) for r in connection.execute(sa.select(table)).mappings()]
            for table in (deliveries, events, inbox_notifications, receipt_nonces, rejected_events)
        }


def add_inbox(app: Notifier) -> None:
    app.inbox.add(
        delivery_id=uuid.uuid4(),
        account_id="acc-1",
        agency_code="000.00.12.H29",
        dossier_code="000.00.12.H29-261126-0001",
        status="submitted",
        title="Hồ sơ đã được tiếp nhận",
        body="Kính gửi Nguyễn Thị Minh Khai",
        link=None,
    )


def test_after_the_period_bodies_and_contacts_are_gone_and_counts_remain(
    app: Notifier, database: Database
) -> None:
    first = ingest(app)
    ingest(app)
    app.ingest.reject(
        b'{"phone": "0901888484"}',
        source="test",
        rejection=EventRejected("bad"),
        submitter=Submitter.service(),
    )
    add_inbox(app)
    app.deliveries.take_nonces("zalo", ["n-1"])
    before = snapshot(database)
    assert len(before["deliveries"]) == 4
    assert all(d["recipient"] and d["content"] for d in before["deliveries"])
    assert all(e["payload"] for e in before["events"])
    retention = Retention(app.database, app.settings, registry=app.registry)

    # A day short of the 30 days: nothing goes (the nonce's 7 days have passed).
    early = retention.purge(now=utcnow() + timedelta(days=29))
    assert (early.deliveries, early.events, early.rejects, early.inbox) == (0, 0, 0, 0)
    assert early.nonces == 1
    assert snapshot(database)["deliveries"] == before["deliveries"]

    now = utcnow() + timedelta(days=31)
    dry = retention.purge(now=now, dry_run=True)
    assert (dry.deliveries, dry.events, dry.rejects, dry.inbox) == (4, 2, 1, 0)
    assert snapshot(database)["deliveries"] == before["deliveries"]  # a dry run changes nothing

    report = retention.purge(now=now)
    assert (report.deliveries, report.events, report.rejects, report.inbox) == (4, 2, 1, 0)
    after = snapshot(database)
    # Gone: full contacts, rendered bodies, event payloads, rejected payloads.
    assert all(d["recipient"] is None and d["content"] is None for d in after["deliveries"])
    assert all(e["payload"] is None for e in after["events"])
    assert all(r["payload"] is None for r in after["rejected_events"])
    assert all(r["payload_raw"] is None for r in after["rejected_events"])
    with database.engine.connect() as connection:  # SQL NULL, not a JSON null
        sql_null = sa.and_(deliveries.c.recipient.is_(None), deliveries.c.content.is_(None))
        cleared = sa.select(sa.func.count()).select_from(deliveries).where(sql_null)
        assert connection.execute(cleared).scalar_one() == 4
        no_payload = sa.select(sa.func.count()).where(events.c.payload.is_(None))
        assert connection.execute(no_payload).scalar_one() == 2
    assert EMAIL not in repr(after["deliveries"]) + repr(after["events"])
    assert PHONE[1:] not in repr(after).replace(" ", "")
    # Kept: every row, status, count, time, masked recipient and search hash.
    kept = ("delivery_id", "status", "attempts", "channel", "created_at", "recipient_masked")
    assert [{k: d[k] for k in kept} for d in after["deliveries"]] == [
        {k: d[k] for k in kept} for d in before["deliveries"]
    ]
    key = app.settings.recipient_hash_key.get_secret_value()
    assert recipient_hash(EMAIL, key) in {d["recipient_hash"] for d in after["deliveries"]}
    assert [e["dossier_code"] for e in after["events"]] == [
        e["dossier_code"] for e in before["events"]
    ]
    assert after["rejected_events"][0]["payload_bytes"] == 23
    assert first["dossier"]["code"] in {d["dossier_code"] for d in after["deliveries"]}
    # The inbox keeps its own, longer period.
    assert len(after["inbox_notifications"]) == 1
    assert retention.purge(now=utcnow() + timedelta(days=181)).inbox == 1
    assert snapshot(database)["inbox_notifications"] == []
    # Purging again finds nothing left.
    assert retention.purge(now=utcnow() + timedelta(days=200)).total == 0


def test_an_event_keeps_its_payload_while_a_later_delivery_is_kept(
    app: Notifier, database: Database
) -> None:
    event = ingest(app)
    event_id = uuid.UUID(event["event_id"])
    # A fallback planned ten days later (it renders from the payload).
    with database.begin() as connection:
        later = connection.execute(
            sa.select(deliveries.c.delivery_id).where(deliveries.c.channel == "email")
        ).scalar_one()
        connection.execute(
            sa.update(deliveries)
            .where(deliveries.c.delivery_id == later)
            .values(created_at=utcnow() + timedelta(days=10))
        )
    retention = Retention(app.database, app.settings, registry=app.registry)
    first = retention.purge(now=utcnow() + timedelta(days=31))
    assert (first.deliveries, first.events) == (1, 0)
    assert _payload(database, event_id) is not None
    second = retention.purge(now=utcnow() + timedelta(days=41))
    assert (second.deliveries, second.events) == (1, 1)
    assert _payload(database, event_id) is None
    # Fallback planning finds nothing to render from, and says so without failing.
    assert app.fallback.plan(later) == []


def _payload(database: Database, event_id: uuid.UUID) -> Any:
    with database.engine.connect() as connection:
        return connection.execute(
            sa.select(events.c.payload).where(events.c.event_id == event_id)
        ).scalar_one()


def test_periods_are_raised_to_what_sending_and_receipts_need(database: Database) -> None:
    settings = make_settings(
        database_url=database.url,
        retention={"deliveries_days": 0.5, "receipt_nonces_days": 0.001},
        worker={"max_age_s": 86_400},
    )
    retention = Retention(database, settings, min_nonce_age_s=1_200)
    assert retention.delivery_age == timedelta(days=1)  # not before the worker gives up
    assert retention.nonce_age == timedelta(seconds=1_200)  # twice a 10-minute window
    app = Notifier(
        make_settings(
            database_url=database.url,
            retention={"receipt_nonces_days": 0.001},
            adapters={"zalo": {"app_id": "a", "app_secret": "s", "oa_secret_key": "k"}},
            channels={"zalo": {"providers": ["zalo"]}},
        )
    )
    try:
        # Zalo's window is a day (its retries run for hours): nonces kept two.
        retention = Retention(app.database, app.settings, registry=app.registry)
        assert retention.nonce_age == timedelta(days=2)
    finally:
        app.close()


def test_workers_run_the_purge_on_a_schedule(database: Database) -> None:
    app = Notifier(
        make_settings(
            database_url=database.url,
            retention={"deliveries_days": 1e-6, "interval_s": 0.1},
            worker={"max_age_s": 0.05, "max_backoff_ms": 500},
            sweeper={"stale_after_s": 1},
        )
    )
    try:
        # The app alone runs no purge (the API process needs none); workers add it.
        assert not [m for m in app.broker.middleware if isinstance(m, RetentionJob)]
        add_retention_job(app)
        jobs = [m for m in app.broker.middleware if isinstance(m, RetentionJob)]
        assert len(jobs) == 1  # installed on the workers' broker
        ingest(app)
        jobs[0].after_worker_boot(app.broker, None)  # type: ignore[arg-type]
        try:
            wait_until(
                lambda: all(d["recipient"] is None for d in snapshot(database)["deliveries"]),
                timeout=10,
            )
        finally:
            jobs[0].before_worker_shutdown(app.broker, None)  # type: ignore[arg-type]
    finally:
        app.close()


def test_purge_command(app: Notifier, database: Database) -> None:
    ingest(app)
    env = {"NOTIFIER_DATABASE_URL": database.url, "NOTIFIER_CONFIG_DIR": str(REPO / "config")}
    runner = CliRunner()
    dry = runner.invoke(main, ["purge", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    # (Logs may share the captured output when another test set structlog up first.)
    assert "\nwould clear: 0 deliveries" in "\n" + dry.output
    done = runner.invoke(main, ["purge", "--json"], env=env)
    assert done.exit_code == 0, done.output
    assert '"deliveries": 0' in done.output
    assert all(d["recipient"] for d in snapshot(database)["deliveries"])


def _aged(app: Notifier, database: Database, events_count: int) -> None:
    """``events_count`` events ingested, then dated two years back: all past retention."""
    for _ in range(events_count):
        ingest(app)
    old = utcnow() - timedelta(days=730)
    with database.begin() as connection:
        connection.execute(sa.update(deliveries).values(created_at=old))
        connection.execute(sa.update(events).values(received_at=old))


def test_purge_on_a_terminal_shows_a_progress_bar_then_the_summary(
    app: Notifier, database: Database
) -> None:
    _aged(app, database, 3)
    env = {
        "NOTIFIER_DATABASE_URL": database.url,
        "NOTIFIER_CONFIG_DIR": str(REPO / "config"),
    }
    output = run_on_terminal(["purge"], env)
    # The bar, drawn to the end (6 deliveries and 3 events cleared, 9 rows in all).
    assert re.search(r"purging\s+\[#+\]\s+9/9", output), output
    assert "cleared: 6 deliveries' contacts and bodies" in output  # portal + email each
    assert not any(d["recipient"] for d in snapshot(database)["deliveries"])


def test_purge_piped_or_with_json_draws_no_bar_and_prints_a_parseable_summary(
    app: Notifier, database: Database
) -> None:
    _aged(app, database, 2)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
        "NOTIFIER_DATABASE_URL": database.url,
        "NOTIFIER_CONFIG_DIR": str(REPO / "config"),
    }
    piped = subprocess.run(
        [sys.executable, "-m", "notifier.cli.main", "purge", "--dry-run"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "purging" not in piped.stdout + piped.stderr
    summary = re.search(r"^would clear: (\d+) deliveries", piped.stdout, re.MULTILINE)
    assert summary is not None, piped.stdout
    assert int(summary.group(1)) == 4
    # --json on a terminal: still no bar, and the output is one JSON document.
    output = run_on_terminal(["purge", "--json"], env)
    assert "purging" not in output
    assert json.loads(output.splitlines()[-1])["deliveries"] == 4


def test_a_citizens_message_and_its_reply_keep_their_text_and_contact_only_as_long_as_deliveries(
    app: Notifier, database: Database
) -> None:
    from notifier.adapter import InboundMessage
    from notifier.store.schema import inbound_messages

    # The app here has no SMS gateway: the reply is recorded but not enqueued (the
    # sweeper would); its contact and text are what retention must clear.
    summary = app.inbound.handle(
        "esms", "sms", [InboundMessage(sender=PHONE, text="HD", provider_message_id="mo:1")]
    )
    assert summary.received == 1
    retention = Retention(app.database, app.settings, registry=app.registry)
    early = retention.purge(now=utcnow() + timedelta(days=29))
    assert (early.inbound, early.deliveries) == (0, 0)

    report = retention.purge(now=utcnow() + timedelta(days=31))
    assert (report.inbound, report.deliveries, report.events) == (1, 1, 0)
    with database.engine.connect() as connection:
        [message] = connection.execute(sa.select(inbound_messages)).mappings().all()
        [reply] = connection.execute(sa.select(deliveries)).mappings().all()
    assert message["text_masked"] is None
    assert (message["command"], message["outcome"]) == ("help", "answered")
    assert PHONE[1:] not in message["sender_masked"]
    assert reply["recipient"] is None
    assert reply["content"] is None
    assert reply["status"] == "queued"
