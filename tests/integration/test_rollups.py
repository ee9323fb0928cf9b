"""The hourly rollup (notifier.store.deliveries.rollups): reports, the overview and the
spend read from it equal the raw computation, also after old deliveries change, after
a purge, across ranges whose ends are not whole hours, and with refreshers racing."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from notifier.cli.main import main
from notifier.ops.reports import Report, build_report
from notifier.ops.retention import Retention
from notifier.ops.rollups import RollupJob
from notifier.settings import RollupSettings
from notifier.store import Database
from notifier.store.deliveries.costs import CostLog
from notifier.store.deliveries.log import DeliveryLog, Percentiles, percentile
from notifier.store.deliveries.rollups import (
    Rollups,
    bucket_bounds,
    bucket_of,
    estimated_percentile,
    floor_hour,
)
from notifier.store.migrate import upgrade
from notifier.store.schema import (
    deliveries,
    delivery_hours,
    events,
    rollup_dirty,
    rollup_state,
    utcnow,
)
from notifier.web.console import views
from tests.support import make_settings, notifier_env, wait_until

pytestmark = pytest.mark.integration
VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")
HASH_KEY = "rollup-test-key"
CHANNELS = ("email", "sms", "zalo", "portal")
PROVIDERS = {"email": "smtp", "sms": "esms", "zalo": "zalo", "portal": "inbox"}


def seed(database: Database, now: datetime, *, days: float = 3, events_count: int = 900) -> None:
    """A realistic mix over ``days``: four channels, every status, costs (estimated and
    reported), SMS segments, holds and suppressions, dead letters, delivery times from
    milliseconds to a day (some negative: a fast TTHC clock), reply rows."""
    rng = random.Random(21)
    event_rows: list[dict[str, Any]] = []
    delivery_rows: list[dict[str, Any]] = []
    statuses = [
        ("delivered", 30),
        ("sent", 20),
        ("permanent-failure", 6),
        ("temporary-failure", 3),
        ("suppressed", 5),
        ("scheduled", 3),
        ("superseded", 3),
        ("queued", 2),
        ("unknown", 1),
    ]
    for i in range(events_count):
        received = now - timedelta(seconds=rng.uniform(0, days * 86400))
        occurred = received - timedelta(seconds=rng.uniform(-1, 5))
        agency = f"A{i % 3}"
        event_id = uuid.uuid4()
        event_rows.append(
            {
                "event_id": event_id,
                "received_at": received,
                "occurred_at": occurred,
                "source_system": "motcua",
                "agency_code": agency,
                "dossier_code": f"{agency}-{i}",
                "procedure_code": f"P{i % 4}",
                "status": "reply" if i % 17 == 0 else str(1 + i % 5),
                "payload": None,
            }
        )
        for channel in CHANNELS if i % 3 == 0 else ("email", "portal"):
            status = rng.choices([s for s, _ in statuses], [w for _, w in statuses])[0]
            sent = status in ("sent", "delivered")
            held = status == "scheduled" or (sent and rng.random() < 0.1)
            charged = sent and channel in ("sms", "zalo")
            delivery_rows.append(
                {
                    "delivery_id": uuid.uuid4(),
                    "event_id": event_id,
                    "dossier_code": f"{agency}-{i}",
                    "agency_code": agency,
                    "procedure_code": f"P{i % 4}",
                    "event_status": "1",
                    "channel": channel,
                    "provider": None
                    if status in ("suppressed", "scheduled")
                    else PROVIDERS[channel],
                    "language": "vi",
                    "template": "t",
                    "recipient_masked": "09******12",
                    "recipient_hash": f"h{i}",
                    "recipient": "0912345612",
                    "content": {"text": "x"},
                    "status": status,
                    "attempts": 1,
                    "exhausted": status == "permanent-failure" and rng.random() < 0.5,
                    "created_at": received,
                    "updated_at": received,
                    "sent_at": received + timedelta(seconds=rng.lognormvariate(1, 2.5))
                    if sent
                    else None,
                    "segments": rng.randint(1, 3) if charged and channel == "sms" else None,
                    "cost_vnd": Decimal(rng.choice(["250", "300.50", "450"])) if charged else None,
                    "cost_source": rng.choice(["estimate", "reported"]) if charged else None,
                    "hold_reason": rng.choice(["quiet_hours", "frequency_cap"]) if held else None,
                    "suppressed_reason": rng.choice(["channel_off", None])
                    if status == "suppressed"
                    else None,
                }
            )
    with database.begin() as connection:
        connection.execute(events.insert(), event_rows)
        connection.execute(deliveries.insert(), delivery_rows)


@contextmanager
def raw_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reads as before the rollup: every figure from the raw rows."""
    with monkeypatch.context() as patch:
        patch.setattr(Rollups, "enabled", property(lambda self: False))
        yield


def refresh_all(rollups: Rollups, now: datetime) -> None:
    while rollups.refresh(now, max_hours=200).rolled:
        pass


def report_parts(report: Report) -> dict[str, Any]:
    """A report's figures, delivery times aside (compared within their bucket)."""
    body = report.as_json()
    body.pop("generated_at")
    body.pop("latency")
    return body


def assert_latency_within_buckets(
    estimated: dict[str, Percentiles], exact: dict[str, Percentiles]
) -> None:
    assert estimated.keys() == exact.keys()
    for channel, figure in exact.items():
        assert estimated[channel].count == figure.count, channel
        for q in ("p50", "p90", "p95", "p99"):
            truth, guess = getattr(figure, q), getattr(estimated[channel], q)
            if truth is None:
                assert guess is None
                continue
            low, high = bucket_bounds(bucket_of(truth))
            # Within the bucket of the exact figure, give or take its neighbour's width
            # (the two samples percentile_cont interpolates may sit in adjacent buckets).
            slack = 2 * (high - low) + 0.002
            assert abs(guess - truth) <= slack, (channel, q, guess, truth)


def dirty_marks(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(rollup_dirty)).scalar_one()
        )


def compare_everything(
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    since: datetime,
    until: datetime,
    now: datetime,
) -> None:
    log = DeliveryLog(database, HASH_KEY)
    costs = CostLog(database)
    month = (now - timedelta(days=40), now + timedelta(hours=1))

    def figures() -> tuple[Any, ...]:
        report = build_report(log, since, until)
        overviews = {w: views.overview(log, w, now) for w in ("day", "month")}
        return (
            report_parts(report),
            report.latency,
            {
                w: {**o.as_json(), "latency": None, "median_seconds_event_to_sent": None}
                for w, o in overviews.items()
            },
            {w: o.latency for w, o in overviews.items()},
            costs.spend(*month),
            costs.spend(*month, ["A1"]),
            log.reason_counts(),
        )

    rolled = figures()
    with raw_only(monkeypatch):
        raw = figures()
    assert rolled[0] == raw[0]
    assert_latency_within_buckets(rolled[1], raw[1])
    assert rolled[2] == raw[2]
    for window in ("day", "month"):
        assert_latency_within_buckets(rolled[3][window], raw[3][window])
    assert rolled[4:] == raw[4:]


def test_reports_overview_and_spend_from_the_rollup_equal_the_raw_rows_on_a_realistic_mix(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    seed(pg_database, now)
    rollups = Rollups(pg_database)
    first = rollups.refresh(now, max_hours=10)
    assert first.rolled == 10  # bounded per run
    refresh_all(rollups, now)
    since, until = floor_hour(now) - timedelta(days=4), floor_hour(now) + timedelta(hours=1)
    with rollups.reading() as connection:
        plan = rollups.plan(connection, since, until)
    assert plan.rolled
    assert plan.rolled[-1][1] == floor_hour(now - timedelta(hours=1))
    with pg_database.engine.connect() as connection:
        rolled = connection.execute(sa.select(sa.func.sum(delivery_hours.c.deliveries))).scalar()
        everything = connection.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar()
    assert 0 < int(rolled) < int(everything)  # the last hour or two are read raw
    compare_everything(pg_database, monkeypatch, since, until, now)


def test_a_report_whose_ends_are_not_whole_hours_counts_the_edge_minutes_from_raw_rows(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    seed(pg_database, now)
    refresh_all(Rollups(pg_database), now)
    since = floor_hour(now) - timedelta(days=2, hours=5) + timedelta(minutes=17, seconds=3)
    until = floor_hour(now) - timedelta(hours=6) + timedelta(minutes=43)
    with Rollups(pg_database).reading() as connection:
        plan = Rollups(pg_database).plan(connection, since, until)
    assert plan.raw[0] == (since, floor_hour(since) + timedelta(hours=1))
    assert plan.raw[-1] == (floor_hour(until), until)
    compare_everything(pg_database, monkeypatch, since, until, now)


def test_an_old_delivery_that_changes_is_read_right_at_once_and_after_the_refresh(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    seed(pg_database, now)
    rollups = Rollups(pg_database)
    refresh_all(rollups, now)
    assert dirty_marks(pg_database) == 0
    d = deliveries.c
    with pg_database.begin() as connection:
        # An admin's replay of a two-day-old dead letter, sent and charged now; a late
        # receipt turning an old SMS into delivered with the provider's own charge.
        dead = connection.execute(
            sa.select(d.delivery_id)
            .where(d.exhausted, d.created_at < now - timedelta(days=2))
            .limit(1)
        ).scalar_one()
        connection.execute(
            sa.update(deliveries)
            .where(d.delivery_id == dead)
            .values(
                status="sent",
                exhausted=False,
                sent_at=now,
                cost_vnd=Decimal("777"),
                cost_source="reported",
                segments=2,
            )
        )
        late = connection.execute(
            sa.select(d.delivery_id)
            .where(d.status == "sent", d.channel == "sms", d.created_at < now - timedelta(days=1))
            .limit(1)
        ).scalar_one()
        connection.execute(
            sa.update(deliveries)
            .where(d.delivery_id == late)
            .values(status="delivered", cost_vnd=Decimal("999.99"), cost_source="reported")
        )
    assert dirty_marks(pg_database) == 2
    since, until = now - timedelta(days=3, hours=1), now
    compare_everything(pg_database, monkeypatch, since, until, now)  # dirty hours read raw
    report = rollups.refresh(now)
    assert report.recomputed == 2
    assert dirty_marks(pg_database) == 0
    compare_everything(pg_database, monkeypatch, since, until, now)  # the rollup is right


def test_a_purge_marks_nothing_and_a_deleted_delivery_leaves_the_rollup(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    seed(pg_database, now)
    rollups = Rollups(pg_database)
    refresh_all(rollups, now)
    purged = Retention(pg_database, make_settings()).purge(now + timedelta(days=29, hours=12))
    assert purged.deliveries > 0
    assert dirty_marks(pg_database) == 0  # contacts and texts are not counted
    with pg_database.begin() as connection:
        connection.execute(
            sa.delete(deliveries).where(
                deliveries.c.created_at < now - timedelta(days=2), deliveries.c.channel == "sms"
            )
        )
    assert dirty_marks(pg_database) > 0
    since, until = now - timedelta(days=3, hours=1), now
    compare_everything(pg_database, monkeypatch, since, until, now)
    rollups.refresh(now, max_hours=500)
    assert dirty_marks(pg_database) == 0
    compare_everything(pg_database, monkeypatch, since, until, now)


def test_two_refreshers_at_once_count_each_hour_once(pg_database: Database) -> None:
    now = utcnow()
    seed(pg_database, now, events_count=600)
    d = deliveries.c
    # Old changes waiting too, so both refreshers find dirty hours and hours to roll.
    Rollups(pg_database).refresh(now, max_hours=30)
    with pg_database.begin() as connection:
        connection.execute(
            sa.update(deliveries)
            .where(d.status == "queued", d.created_at < now - timedelta(hours=3))
            .values(status="sent", sent_at=now)
        )
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def refresher() -> None:
        try:
            start.wait()
            rollups = Rollups(pg_database)
            for _ in range(20):
                rollups.refresh(now, max_hours=5)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=refresher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with pg_database.engine.connect() as connection:
        ready = connection.execute(sa.select(rollup_state.c.rolled_until)).scalar_one()
        in_rollup = connection.execute(
            sa.select(delivery_hours.c.status, sa.func.sum(delivery_hours.c.deliveries)).group_by(
                delivery_hours.c.status
            )
        ).all()
        in_log = connection.execute(
            sa.select(d.status, sa.func.count()).where(d.created_at < ready).group_by(d.status)
        ).all()
    assert ready == floor_hour(now - timedelta(hours=1))
    assert dict(in_rollup) == dict(in_log)


def test_migration_0018_rolls_up_the_deliveries_already_there(empty_pg_url: str) -> None:
    database = Database(empty_pg_url)
    try:
        upgrade(database, "0017")
        now = utcnow()
        seed(database, now, events_count=300)
        upgrade(database)
        with database.engine.connect() as connection:
            ready = connection.execute(sa.select(rollup_state.c.rolled_until)).scalar_one()
            rolled = connection.execute(
                sa.select(sa.func.sum(delivery_hours.c.deliveries))
            ).scalar_one()
            expected = connection.execute(
                sa.select(sa.func.count()).where(deliveries.c.created_at < ready)
            ).scalar_one()
            marks = connection.execute(sa.select(sa.func.count()).select_from(rollup_dirty))
        assert ready == floor_hour(now - timedelta(hours=1))
        assert int(rolled) == expected > 0
        assert marks.scalar_one() == 0
    finally:
        database.dispose()


def test_sqlite_reads_the_raw_rows_and_has_nothing_to_refresh(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/embedded.db")
    try:
        upgrade(database)
        now = utcnow()
        seed(database, now, events_count=60)
        rollups = Rollups(database)
        assert rollups.refresh(now).rolled == 0
        log = DeliveryLog(database, HASH_KEY)
        report = build_report(log, now - timedelta(days=4), now + timedelta(minutes=1))
        with database.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(deliveries))
            assert report.deliveries == total.scalar_one()
    finally:
        database.dispose()


def test_estimated_percentiles_stay_within_the_buckets_of_the_exact_ones() -> None:
    rng = random.Random(5)
    samples = sorted(rng.lognormvariate(1, 2) for _ in range(5000))
    histogram: dict[int, int] = {}
    for sample in samples:
        histogram[bucket_of(sample)] = histogram.get(bucket_of(sample), 0) + 1
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = percentile(samples, q)
        low, high = bucket_bounds(bucket_of(exact))
        assert abs(estimated_percentile(histogram, q) - exact) <= high - low
    assert bucket_of(0.0) == 0
    assert bucket_of(10**9) == bucket_of(10**8)  # the last bucket has no end


def test_the_rollup_command_rolls_up_settled_hours_and_rebuilds_on_demand(
    pg_url: str, pg_database: Database
) -> None:
    now = utcnow()
    seed(pg_database, now, days=1, events_count=120)
    env = notifier_env(make_settings(database_url=pg_url))
    runner = CliRunner()
    refreshed = runner.invoke(main, ["db", "rollup", "--max-hours", "5"], env=env)
    assert refreshed.exit_code == 0, refreshed.output
    assert "rolled up 5 new hours" in refreshed.output
    rebuilt = runner.invoke(main, ["db", "rollup", "--rebuild"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    with pg_database.engine.connect() as connection:
        ready = connection.execute(sa.select(rollup_state.c.rolled_until)).scalar_one()
    assert ready == floor_hour(now - timedelta(hours=1))
    assert f"{ready:%Y-%m-%d %H:%M}" in rebuilt.output


def test_a_worker_processs_rollup_job_refreshes_on_its_interval_and_not_on_sqlite(
    pg_database: Database, tmp_path: Path
) -> None:
    now = utcnow()
    seed(pg_database, now, days=1, events_count=60)
    job = RollupJob(Rollups(pg_database), RollupSettings(interval_s=0.05, max_hours=100))
    assert job.enabled
    thread = threading.Thread(target=job.run)
    thread.start()
    try:
        with pg_database.engine.connect() as connection:
            query = sa.select(rollup_state.c.rolled_until)
            wait_until(lambda: connection.execute(query).scalar_one_or_none() is not None)
            assert connection.execute(query).scalar_one() == floor_hour(now - timedelta(hours=1))
    finally:
        job.stopping.set()
        thread.join()
    embedded = Database(f"sqlite:///{tmp_path}/embedded.db")
    try:
        assert not RollupJob(Rollups(embedded), RollupSettings()).enabled
    finally:
        embedded.dispose()
