"""Retention (issue 9, point 4): after the period, with the clock controlled by the test,
bodies and contacts are gone and counts, statuses and search hashes remain. On SQLite
and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
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


# -- a purge reads only what it has to clear (issue 21, item 6) -----------------------------

CLEARED_DAYS, PER_DAY, BATCH = 20, 500, 50


def _seed_log(database: Database, days_ago: float, count: int, *, cleared: bool) -> None:
    """``count`` events of one delivery each, ``days_ago`` old, in SQL (fast); ``cleared``
    as an earlier purge left them (no contact, text or payload)."""
    kept = "NULL" if cleared else "'x' || i"
    text = "NULL" if cleared else """'{"text": "Ho so"}'::json"""
    parameters = {"tag": f"{days_ago}-", "days": days_ago, "count": count}
    with database.begin() as connection:
        connection.execute(
            sa.text(
                f"""
                INSERT INTO events (event_id, received_at, occurred_at, source_system,
                    agency_code, dossier_code, procedure_code, status, payload)
                SELECT md5(:tag || i)::uuid, now() - :days * interval '1 day'
                         + i * interval '1 ms', now() - :days * interval '1 day', 'motcua',
                       'A001', 'A001-' || i, 'P1', '1', {text}
                FROM generate_series(1, :count) AS i
                """
            ),
            parameters,
        )
        connection.execute(
            sa.text(
                f"""
                INSERT INTO deliveries (delivery_id, event_id, dossier_code, agency_code,
                    procedure_code, event_status, channel, language, template,
                    recipient_masked, recipient_hash, recipient, content, status,
                    created_at, updated_at)
                SELECT md5('d' || :tag || i)::uuid, md5(:tag || i)::uuid, 'A001-' || i,
                       'A001', 'P1', '1', 'sms', 'vi', 'status-1', '09******01',
                       md5('r' || i), {kept}, {text}, 'delivered',
                       now() - :days * interval '1 day' + i * interval '1 ms',
                       now() - :days * interval '1 day'
                FROM generate_series(1, :count) AS i
                """
            ),
            parameters,
        )


def _table_stats(url: str) -> dict[str, int]:
    """Rows read so far (sequential scans plus heap rows fetched through indexes), rows
    inserted and rows updated in deliveries and events, from PostgreSQL's statistics."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0),"
            " n_tup_ins, n_tup_upd FROM pg_stat_user_tables"
            " WHERE relname IN ('deliveries', 'events')"
        ).fetchall()
    stats = {}
    for name, read, inserted, updated in rows:
        stats |= {f"{name} read": read, f"{name} inserted": inserted, f"{name} updated": updated}
    return stats


def _settled_stats(url: str) -> dict[str, int]:
    """The statistics once every backend that closed has flushed its own (each does as
    it exits, a moment after its client left): the same on two looks."""
    last: list[dict[str, int]] = [_table_stats(url)]

    def same_twice() -> dict[str, int] | None:
        time.sleep(0.3)
        now, last[0] = _table_stats(url), last[0]
        same = now == last[0]
        last[0] = now
        return now if same else None

    return wait_until(same_twice)  # type: ignore[no-any-return]


def test_a_purge_after_many_cleared_days_reads_only_the_rows_it_clears(
    pg_database: Database,
) -> None:
    """Rows stay after a purge (only contacts, texts and payloads go), so a purge that
    looked for the oldest row still to clear walked past every day cleared before, once
    per batch: a day's purge at 5 million rows took 81.7 s."""
    for day in range(CLEARED_DAYS):
        _seed_log(pg_database, 60 - day, PER_DAY, cleared=True)
    _seed_log(pg_database, 35, PER_DAY, cleared=False)  # the day past retention
    _seed_log(pg_database, 1, PER_DAY, cleared=False)  # kept
    with pg_database.begin() as connection:
        connection.execute(sa.text("ANALYZE deliveries"))
        connection.execute(sa.text("ANALYZE events"))
    url = pg_database.url
    settings = make_settings(database_url=url, retention={"batch": BATCH})
    # The purges of those days: the last one ran ten days ago (nothing left to clear).
    assert Retention(pg_database, settings).purge(now=utcnow() - timedelta(days=10)).total == 0
    pg_database.dispose()  # its backends exit, and flush their statistics
    before = _settled_stats(url)
    purger = Database(url)
    try:
        report = Retention(purger, settings).purge()
    finally:
        purger.dispose()
    assert (report.deliveries, report.events) == (PER_DAY, PER_DAY)
    after = wait_until(
        lambda: (s := _table_stats(url))["deliveries updated"]
        >= before["deliveries updated"] + PER_DAY
        and s["events updated"] >= before["events updated"] + PER_DAY
        and s
    )
    read = {name: after[name] - before[name] for name in ("deliveries read", "events read")}
    # Each row cleared is read twice (found, then updated), and each event's deliveries
    # once (is one of them recent?); the 10,000 rows of the cleared days not at all (a
    # purge that looked from the oldest row read them for each of the 10 batches; this
    # one starts where the last purge ended).
    assert read["deliveries read"] <= 3 * PER_DAY + BATCH, read
    assert read["events read"] <= 2 * PER_DAY + BATCH, read
    with pg_database.engine.connect() as connection:
        still_kept = connection.execute(
            sa.select(sa.func.count()).where(deliveries.c.recipient.is_not(None))
        ).scalar_one()
    assert still_kept == PER_DAY  # the recent day's


def test_a_purge_interrupted_between_batches_is_finished_by_the_next(
    app: Notifier, database: Database
) -> None:
    for _ in range(5):
        ingest(app)  # ten deliveries (email and portal each)
    old = utcnow() - timedelta(days=40)
    with database.begin() as connection:
        connection.execute(sa.update(deliveries).values(created_at=old))
        connection.execute(sa.update(events).values(received_at=old))
    settings = make_settings(database_url=database.url, retention={"batch": 3})
    retention = Retention(app.database, settings)

    def stop_after_two(_rows: int, seen: list[int] = []) -> None:  # noqa: B006
        seen.append(_rows)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retention.purge(on_batch=stop_after_two)
    halfway = snapshot(database)["deliveries"]
    assert sum(d["recipient"] is None for d in halfway) == 6  # two batches committed
    report = retention.purge()
    assert report.deliveries == 4
    assert report.events == 5
    assert all(d["recipient"] is None and d["content"] is None for d in snapshot(database)[
        "deliveries"
    ])


def test_events_spared_for_a_later_delivery_do_not_stall_a_purge_at_one_instant(
    app: Notifier, database: Database
) -> None:
    """More events spared (a delivery of theirs is recent) than a batch holds, all
    received at the same instant: the purge moves past them and clears the others."""
    ingested = [uuid.UUID(ingest(app)["event_id"]) for _ in range(8)]
    spared = ingested[:5]
    old = utcnow() - timedelta(days=40)
    with database.begin() as connection:
        connection.execute(sa.update(events).values(received_at=old))
        connection.execute(sa.update(deliveries).values(created_at=old))
        for event_id in spared:  # a fallback planned yesterday, say
            connection.execute(
                sa.update(deliveries)
                .where(deliveries.c.event_id == event_id, deliveries.c.channel == "email")
                .values(created_at=utcnow() - timedelta(days=1))
            )
    settings = make_settings(database_url=database.url, retention={"batch": 2})
    report = Retention(app.database, settings).purge()
    assert report.events == 3
    assert [_payload(database, e) is None for e in ingested] == [False] * 5 + [True] * 3
