"""The counters behind /metrics (issue 21, item 6): folded from the status outbox, equal
to a recount of the log, never dropping, never counted twice by concurrent folders; the
backlog gauges read through indexes; a scrape that does not read the whole log.

The delivery transitions are the store's own (claim, finish, receipt, dead letter,
release), on SQLite and PostgreSQL; the rows they start from are written straight to
the tables."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from notifier.app import Notifier
from notifier.ops.metrics import exposition, sample_value, state_registry
from notifier.ops.retention import Retention
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.counters import (
    DELIVERIES,
    HELD,
    LATENCY_BUCKET,
    LATENCY_SUM,
    REJECTED,
    RETRIES,
    SUPPRESSED,
    MetricCounters,
    backlog,
    fold_rows,
    rebuild_counters,
)
from notifier.store.deliveries.lifecycle import (
    AttemptRecord,
    DeliveryStatus,
    DeliveryStore,
    set_status,
)
from notifier.store.schema import deliveries, events, rejected_events
from notifier.store.statuses import (
    EventChange,
    EventStatusChange,
    StatusOutbox,
    record_event_changes,
)
from tests.support import RunningWorker, make_settings, wait_until
from tests.test_pipeline import MailA, MailB, build_app, settled, submit

LEASE = timedelta(minutes=1)


def planned(
    database: Database,
    channel: str,
    *,
    status: str = "queued",
    received_at: datetime | None = None,
    published_at: datetime | None = None,
    due_at: datetime | None = None,
    hold_reason: str | None = None,
    created_at: datetime | None = None,
) -> uuid.UUID:
    """One event and one delivery of it, written straight to the tables."""
    now = datetime.now(UTC)
    event_id, delivery_id = uuid.uuid4(), uuid.uuid4()
    dossier = f"000.00.12.H29-{event_id.hex[:8]}"
    with database.begin() as connection:
        connection.execute(
            events.insert().values(
                event_id=event_id,
                received_at=received_at or now,
                published_at=published_at,
                occurred_at=received_at or now,
                source_system="test",
                agency_code="000.00.12.H29",
                dossier_code=dossier,
                procedure_code="1.0001",
                status="received",
            )
        )
        connection.execute(
            deliveries.insert().values(
                delivery_id=delivery_id,
                event_id=event_id,
                dossier_code=dossier,
                agency_code="000.00.12.H29",
                procedure_code="1.0001",
                event_status="received",
                channel=channel,
                language="vi",
                template="received",
                recipient="someone",
                recipient_masked="s***",
                recipient_hash=uuid.uuid4().hex,
                status=status,
                due_at=due_at,
                hold_reason=hold_reason,
                created_at=created_at or now,
                updated_at=created_at or now,
            )
        )
    return delivery_id


def send(
    store: DeliveryStore, delivery_id: uuid.UUID, *outcomes: DeliveryStatus, exhausted: bool = False
) -> None:
    """One claim and one provider answer per outcome, as the sender records them."""
    for outcome in outcomes:
        [claimed] = store.claim([delivery_id], LEASE).claimed
        store.finish_attempts(
            [
                AttemptRecord(
                    claimed,
                    outcome,
                    "gw",
                    datetime.now(UTC),
                    exhausted=exhausted and outcome is DeliveryStatus.PERMANENT_FAILURE,
                )
            ]
        )


def reject(database: Database) -> None:
    with database.begin() as connection:
        connection.execute(
            rejected_events.insert().values(
                reject_id=uuid.uuid4(),
                received_at=datetime.now(UTC),
                source="test",
                reason="occurred_at: not a date",
                payload_bytes=2,
            )
        )
        record_event_changes(
            connection,
            [
                EventStatusChange(
                    EventChange.REJECTED, None, None, None, datetime.now(UTC), "not a date"
                )
            ],
        )


def realistic_flow(database: Database) -> dict[str, uuid.UUID]:
    """Sent after two retries then delivered; sent at once; failed after a retry (a dead
    letter); suppressed by an opt-out; held, released and sent; one still queued; one
    rejected event."""
    store = DeliveryStore(database)
    ids = {
        # Published 10 s ago (the publisher's header), received 3 s ago by the ingest.
        "retried": planned(
            database,
            "email",
            received_at=datetime.now(UTC) - timedelta(seconds=3),
            published_at=datetime.now(UTC) - timedelta(seconds=10),
        ),
        "sent": planned(database, "sms"),
        "dead": planned(database, "sms"),
        "opted_out": planned(database, "email"),
        "held": planned(
            database,
            "sms",
            status="scheduled",
            due_at=datetime.now(UTC) - timedelta(seconds=1),
            hold_reason="quiet_hours",
        ),
        "queued": planned(database, "email"),
    }
    temporary, sent = DeliveryStatus.TEMPORARY_FAILURE, DeliveryStatus.SENT
    send(store, ids["retried"], temporary, temporary, sent)
    assert store.apply_receipt(
        "gw",
        channels=["email"],
        delivered=True,
        delivery_id=ids["retried"],
        provider_message_id=None,
        error=None,
        error_code=None,
    )
    send(store, ids["sent"], sent)
    send(store, ids["dead"], temporary, DeliveryStatus.PERMANENT_FAILURE, exhausted=True)
    with database.begin() as connection:
        assert set_status(
            connection,
            ids["opted_out"],
            only_from=["queued"],
            values={"status": "suppressed", "suppressed_reason": "opted_out"},
        )
    assert store.release_due(10) == [(ids["held"], "sms")]
    send(store, ids["held"], sent)
    reject(database)
    return ids


def counted(database: Database) -> dict[str, dict[tuple[str, ...], float]]:
    return MetricCounters(database).read().values


def test_folded_counters_equal_a_recount_of_the_log_after_a_realistic_flow(
    database: Database,
) -> None:
    realistic_flow(database)
    counters = MetricCounters(database)
    assert counters.pending() == 7  # six final changes (one sent then delivered), a reject
    assert counters.fold_all() == 7
    assert counters.pending() == 0
    folded = counted(database)
    assert folded[DELIVERIES] == {
        ("email", "gw", "sent"): 1,
        ("email", "gw", "delivered"): 1,
        ("email", "none", "suppressed"): 1,
        ("sms", "gw", "sent"): 2,
        ("sms", "gw", "permanent-failure"): 1,
    }
    assert folded[RETRIES] == {("email",): 2, ("sms",): 1}
    assert folded[SUPPRESSED] == {("email", "opted_out"): 1}
    assert folded[HELD] == {("sms", "quiet_hours"): 1}
    assert folded[REJECTED] == {(): 1}
    # Latency: the sends accepted, held ones left out (the email after its retries).
    assert sum(v for (channel, _), v in folded[LATENCY_BUCKET].items() if channel == "email") == 1
    assert sum(v for (channel, _), v in folded[LATENCY_BUCKET].items() if channel == "sms") == 1
    assert folded[LATENCY_SUM][("email",)] >= 10.0  # from the publish, not the receipt

    # The recount (what migration 0016 does) gives the same, but for the email sent
    # before its receipt: the log keeps only its last status.
    rebuild_counters(database)
    recounted = counted(database)
    expected = {metric: dict(values) for metric, values in folded.items()}
    expected[DELIVERIES].pop(("email", "gw", "sent"))
    assert {m: v for m, v in recounted.items() if m != LATENCY_SUM} == {
        m: v for m, v in expected.items() if m != LATENCY_SUM
    }
    for channel, total in folded[LATENCY_SUM].items():
        assert recounted[LATENCY_SUM][channel] == pytest.approx(total, abs=0.01)
    # A rebuild marks every change folded: nothing is counted twice afterwards.
    assert counters.fold_all() == 0


def test_counters_do_not_drop_after_a_replay_and_a_retention_purge(database: Database) -> None:
    ids = realistic_flow(database)
    counters = MetricCounters(database)
    counters.fold_all()
    before = counted(database)
    # An admin's replay of the dead letter resets its attempts (the old gauge of
    # retries, summed over the rows, dropped by one here)...
    with database.begin() as connection:
        assert set_status(
            connection,
            ids["dead"],
            only_from=["permanent-failure"],
            values={"status": "queued", "attempts": 0, "exhausted": False},
        )
    # ...and retention clears old contacts and prunes the outbox once folded.
    retention = Retention(database, make_settings(database_url=database.url))
    report = retention.purge(now=datetime.now(UTC) + timedelta(days=400))
    assert report.statuses == 7
    assert counters.fold_all() == 0
    assert counted(database) == before


def test_retention_counts_a_change_before_it_prunes_it(database: Database) -> None:
    """Even with no sweeper and no scrape to fold them (the purge folds first)."""
    delivery_id = planned(database, "email")
    with database.begin() as connection:
        set_status(connection, delivery_id, only_from=["queued"], values={"status": "suppressed"})
    retention = Retention(database, make_settings(database_url=database.url))
    later = datetime.now(UTC) + timedelta(days=400)
    assert retention.purge(now=later, dry_run=True).statuses == 0  # not counted yet
    assert retention.purge(now=later).statuses == 1
    assert counted(database)[DELIVERIES] == {("email", "none", "suppressed"): 1}
    assert MetricCounters(database).pending() == 0


def test_two_concurrent_folders_never_count_a_change_twice(pg_database: Database) -> None:
    ids = [planned(pg_database, "email") for _ in range(300)]
    for delivery_id in ids:
        with pg_database.begin() as connection:
            set_status(
                connection, delivery_id, only_from=["queued"], values={"status": "suppressed"}
            )
    start = threading.Barrier(2)
    folded: list[int] = []

    def folder() -> None:
        counters = MetricCounters(pg_database)
        start.wait()
        total = 0
        while True:
            done = counters.fold(limit=7)
            total += done
            if done == 0 and counters.pending() == 0:
                break
        folded.append(total)

    threads = [threading.Thread(target=folder) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(folded) == 300
    assert all(n > 0 for n in folded)  # both took part
    assert counted(pg_database)[DELIVERIES] == {("email", "none", "suppressed"): 300}


def test_the_relay_folds_what_it_publishes_once_alongside_a_folder(pg_database: Database) -> None:
    ids = [planned(pg_database, "email") for _ in range(200)]
    for delivery_id in ids:
        with pg_database.begin() as connection:
            set_status(
                connection, delivery_id, only_from=["queued"], values={"status": "suppressed"}
            )
    outbox = StatusOutbox(pg_database)

    def refused(_rows: object) -> None:
        raise RuntimeError("no confirm")

    with pytest.raises(RuntimeError):  # not confirmed: neither published nor folded
        outbox.publish_pending(refused, batch=50, fold=fold_rows)
    assert MetricCounters(pg_database).pending() == 200
    start = threading.Barrier(2)
    published: list[int] = []

    def relay() -> None:
        start.wait()
        while (n := outbox.publish_pending(lambda _rows: None, batch=9, fold=fold_rows)) > 0:
            published.append(n)

    def folder() -> None:
        start.wait()
        while MetricCounters(pg_database).fold(limit=7) or outbox.pending_count():
            pass

    threads = [threading.Thread(target=relay), threading.Thread(target=folder)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(published) == 200
    assert MetricCounters(pg_database).pending() == 0
    assert counted(pg_database)[DELIVERIES] == {("email", "none", "suppressed"): 200}


def test_the_oldest_unsent_delivery_counts_queued_and_due_ones_not_held_ones(
    database: Database,
) -> None:
    now = datetime.now(UTC)
    planned(database, "email", created_at=now - timedelta(minutes=10))
    planned(database, "email", created_at=now - timedelta(minutes=2))
    # Held until tomorrow: not waiting to be sent now.
    planned(
        database,
        "sms",
        status="scheduled",
        due_at=now + timedelta(hours=8),
        hold_reason="quiet_hours",
        created_at=now - timedelta(hours=3),
    )
    # Held and due five minutes ago (the sweeper is late): waiting since it was due.
    planned(
        database,
        "zalo",
        status="scheduled",
        due_at=now - timedelta(minutes=5),
        hold_reason="quiet_hours",
        created_at=now - timedelta(hours=9),
    )
    found = backlog(database, now)
    ages = {c: (now - since).total_seconds() for c, since in found.oldest_unsent.items()}
    assert ages == {"email": pytest.approx(600, abs=1), "zalo": pytest.approx(300, abs=1)}
    assert found.held == {("sms", "quiet_hours"): 1, ("zalo", "quiet_hours"): 1}
    assert found.in_flight == {
        ("email", "none", "queued"): 2,
        ("sms", "none", "scheduled"): 1,
        ("zalo", "none", "scheduled"): 1,
    }


def _scrape(app: Notifier) -> str:
    return exposition(state_registry(app))[0].decode()


def test_a_scrape_shows_counters_histogram_and_backlog(database: Database) -> None:
    app = Notifier(make_settings(database_url=database.url))
    try:
        realistic_flow(database)
        text = _scrape(app)  # the scrape folds what is pending
    finally:
        app.close()
    assert sample_value(text, "notifier_status_counters_pending") == 0
    assert (
        sample_value(text, "notifier_deliveries_total", channel="sms", provider="gw", status="sent")
        == 2
    )
    assert sample_value(text, "notifier_delivery_retries_total", channel="email") == 2
    assert sample_value(text, "notifier_rejected_events_total") == 1
    assert sample_value(text, "notifier_dead_letters", channel="sms") == 1
    assert (
        sample_value(
            text, "notifier_deliveries_in_flight", channel="email", provider="none", status="queued"
        )
        == 1
    )
    assert (
        sample_value(
            text, "notifier_deliveries_suppressed_total", channel="email", reason="opted_out"
        )
        == 1
    )
    assert (
        sample_value(text, "notifier_deliveries_held_total", channel="sms", reason="quiet_hours")
        == 1
    )
    # The histogram counts the sends accepted (held ones left out): one per channel.
    assert sample_value(text, "notifier_publish_to_accepted_seconds_count", channel="sms") == 1
    assert sample_value(text, "notifier_publish_to_accepted_seconds_count", channel="email") == 1
    assert (
        sample_value(
            text, "notifier_publish_to_accepted_seconds_bucket", channel="email", le="+Inf"
        )
        == 1
    )
    assert (sample_value(text, "notifier_oldest_unsent_seconds", channel="email") or -1) >= 0


def test_a_scrape_reads_counters_not_the_whole_delivery_log(pg_database: Database) -> None:
    """Every statement a scrape sends is explained (ANALYZE, sequential scans off, as the
    planner chooses at millions of rows): the rows it reads from ``deliveries`` are the
    backlog's, not the log's."""
    now = datetime.now(UTC)
    seed = """
        INSERT INTO events (event_id, received_at, occurred_at, source_system,
                            agency_code, dossier_code, procedure_code, status)
        SELECT md5('e' || i)::uuid, :now, :now, 'test', 'A', 'A-' || i, 'P', '1'
        FROM generate_series(1, 3000) AS i;
        INSERT INTO deliveries (delivery_id, event_id, dossier_code, agency_code,
            procedure_code, event_status, channel, provider, language, template,
            recipient_masked, recipient_hash, status, attempts, created_at,
            updated_at, sent_at)
        SELECT md5('d' || i)::uuid, md5('e' || i)::uuid, 'A-' || i, 'A', 'P', '1',
               'email', 'smtp', 'vi', 't', 'x', md5('r' || i),
               CASE WHEN i <= 5 THEN 'queued' ELSE 'delivered' END, 1, :now, :now, :now
        FROM generate_series(1, 3000) AS i;
        ANALYZE deliveries
    """
    with pg_database.begin() as connection:
        for statement in seed.split(";"):
            connection.execute(sa.text(statement), {"now": now})
    rebuild_counters(pg_database)
    app = Notifier(make_settings(database_url=pg_database.url))
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        # The month's spend (cost_vnd, notifier_month_cost_vnd) is read apart: its
        # speed is CostLog's, not the counters'.
        if (
            re.search(r"\bdeliveries\b", statement)
            and statement.lstrip().upper().startswith("SELECT")
            and "cost_vnd" not in statement
        ):
            statements.append((statement, parameters))

    sa.event.listen(app.database.engine, "before_cursor_execute", record)
    try:
        text = _scrape(app)
    finally:
        sa.event.remove(app.database.engine, "before_cursor_execute", record)
        app.close()
    assert (
        sample_value(
            text, "notifier_deliveries_total", channel="email", provider="smtp", status="delivered"
        )
        == 2995
    )
    assert statements
    read = 0
    with pg_database.engine.connect() as connection:
        raw: Any = connection.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
            for statement, parameters in statements:
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
                read += _rows_read(cursor.fetchone()[0][0]["Plan"], "deliveries")
        connection.rollback()
    assert len(statements) >= 2  # the backlog's: deliveries not final, dead letters
    assert read <= 20, read  # the 5 queued ones, a few times; the log holds 3000


def _rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows a plan read from ``table`` (kept or removed by a filter), in all its nodes."""
    own = 0
    if plan.get("Relation Name") == table:
        loops = plan.get("Actual Loops", 1)
        own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
    return own + sum(_rows_read(child, table) for child in plan.get("Plans", []))


def test_a_workers_sweeper_folds_the_changes_without_a_scrape(tmp_path: Path) -> None:
    """The scripted pipeline (SQLite, in-process broker): an email sent after two
    retries is counted by the sweeper's round, with its retries and its latency."""
    app = build_app(tmp_path, sweeper={"interval_s": 0.05})
    MailA.script = ["temp", "temp"]
    MailB.script = ["temp", "temp"]
    counters = MetricCounters(app.database)
    with RunningWorker(app):
        submit(app, sample_event(1, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 1))
        wait_until(lambda: counters.pending() == 0)
        values = counters.read().values
    assert values[DELIVERIES] == {("email", "mail_a", "sent"): 1}
    assert values[RETRIES] == {("email",): 2}
    assert sum(values[LATENCY_BUCKET].values()) == 1
