"""The one "held" mechanism (issue 18): a delivery held for later is a ``scheduled`` row
with a due time and a reason; the sweeper releases each due row exactly once into the
normal send path. On SQLite and PostgreSQL, with a controlled clock (time-machine)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
import time_machine

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.pipeline.sweeper import Sweeper
from notifier.settings import SweeperSettings
from notifier.store import Database
from notifier.store.deliveries.lifecycle import (
    ClaimOutcome,
    DeliveryStatus,
    DeliveryStore,
    HoldReason,
)
from notifier.store.schema import deliveries
from tests.support import RunningWorker, make_settings, wait_until
from tests.test_pipeline import MailA, build_app, rows, submit

# 22:00 in Vietnam (UTC+7) on 3 December 2026.
NIGHT = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
MORNING = datetime(2026, 12, 4, 0, 0, tzinfo=UTC)  # 07:00 in Vietnam


@pytest.fixture
def app(database: Database) -> Iterator[Notifier]:
    app = Notifier(make_settings(database_url=database.url))
    yield app
    app.close()


def planned(app: Notifier, count: int) -> list[UUID]:
    """Record ``count`` events (email and portal each) and return their delivery ids."""
    ids: list[UUID] = []
    for index in range(count):
        event = sample_event(
            index,
            status=Status.SUBMITTED,
            event_id=uuid.uuid4(),
            contacts={"email": f"citizen{index}@example.vn", "portal_account_id": f"acc-{index}"},
        )
        result = app.ingest.handle(json.dumps(event, ensure_ascii=False), source="test")
        ids.extend(delivery_id for delivery_id, _channel in result.to_enqueue)
    return ids


def status_of(database: Database, ids: list[UUID]) -> dict[UUID, tuple[str, str | None]]:
    d = deliveries.c
    with database.engine.connect() as connection:
        return {
            row.delivery_id: (row.status, row.hold_reason)
            for row in connection.execute(
                sa.select(d.delivery_id, d.status, d.hold_reason).where(d.delivery_id.in_(ids))
            )
        }


def test_a_held_delivery_is_released_once_at_its_due_time_and_not_a_second_before(
    app: Notifier, database: Database
) -> None:
    store = app.deliveries
    with time_machine.travel(NIGHT, tick=False) as clock:
        ids = planned(app, 2)
        assert sorted(store.hold(ids, MORNING, HoldReason.QUIET_HOURS)) == sorted(ids)
        assert set(status_of(database, ids).values()) == {("scheduled", "quiet_hours")}
        # Held: a message that reaches one sends nothing and asks for no retry.
        claims = store.claim(ids, timedelta(seconds=60))
        assert claims.claimed == []
        assert set(claims.not_claimed.values()) == {ClaimOutcome.HELD}
        clock.move_to(MORNING - timedelta(seconds=1))
        assert store.release_due(100) == []
        clock.move_to(MORNING)
        released = store.release_due(100)
        assert sorted(delivery_id for delivery_id, _ in released) == sorted(ids)
        assert store.release_due(100) == []  # exactly once
        # Released into the normal path: queued, the reason kept for the reports.
        assert set(status_of(database, ids).values()) == {("queued", "quiet_hours")}


def test_only_deliveries_waiting_to_be_sent_can_be_held(app: Notifier, database: Database) -> None:
    store = app.deliveries
    ids = planned(app, 1)
    claims = store.claim(ids[:1], timedelta(seconds=60))
    assert len(claims.claimed) == 1
    # One is being sent: holding it now would let its send finish as "scheduled".
    held = store.hold(ids, datetime.now(UTC) + timedelta(hours=1), HoldReason.FREQUENCY_CAP)
    assert held == ids[1:]
    assert status_of(database, ids)[ids[0]][0] == "sending"


def test_sweepers_racing_on_postgresql_release_each_held_delivery_once(
    pg_database: Database,
) -> None:
    app = Notifier(make_settings(database_url=pg_database.url))
    try:
        ids = planned(app, 60)  # 120 deliveries
        app.deliveries.hold(ids, datetime.now(UTC) - timedelta(seconds=1), HoldReason.COALESCING)
        sweepers, batch, rounds = 6, 7, 3  # 6 x 7 x 3 = 126 places for 120 rows
        taken: list[list[tuple[UUID, str]]] = [[] for _ in range(sweepers)]
        # A barrier before every round, not only the first: a sweeper that started
        # early cannot drain the table alone (CI saw one thread take all 120), so
        # each round really is six releases at once and each sweeper has rows to take.
        each_round = threading.Barrier(sweepers)

        def sweep(mine: list[tuple[UUID, str]]) -> None:
            other = DeliveryStore(Database(pg_database.url))
            try:
                for _ in range(rounds):
                    each_round.wait(timeout=30)
                    mine.extend(other.release_due(batch))
            finally:
                other.database.dispose()

        threads = [threading.Thread(target=sweep, args=(t,)) for t in taken]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        everything = [delivery_id for mine in taken for delivery_id, _ in mine]
        assert sorted(everything) == sorted(ids)  # all released, none twice
        assert all(taken)  # every sweeper released some: the first round alone has 42 rows
    finally:
        app.close()


def test_a_release_on_postgresql_skips_rows_another_release_has_locked(
    pg_database: Database,
) -> None:
    """What makes the race above safe without waiting: a release passes over rows
    another transaction holds and takes the next due ones. Deterministic: the test
    itself holds the lock."""
    app = Notifier(make_settings(database_url=pg_database.url))
    try:
        ids = planned(app, 5)  # 10 deliveries
        now = datetime.now(UTC)
        for offset, delivery_id in enumerate(ids):  # due one second apart, oldest first
            app.deliveries.hold(
                [delivery_id], now - timedelta(seconds=100 - offset), HoldReason.COALESCING
            )
        d = deliveries.c
        with pg_database.begin() as holder:
            locked = (
                holder.execute(
                    sa.select(d.delivery_id).where(d.delivery_id.in_(ids[:4])).with_for_update()
                )
                .scalars()
                .all()
            )
            assert sorted(locked) == sorted(ids[:4])
            released: list[tuple[UUID, str]] = []
            releaser = threading.Thread(
                target=lambda: released.extend(app.deliveries.release_due(3))
            )
            releaser.start()
            releaser.join(timeout=20)
            # Without SKIP LOCKED the release would wait for this transaction: a deadlock.
            assert not releaser.is_alive()
        assert sorted(delivery_id for delivery_id, _ in released) == sorted(ids[4:7])  # 3, not 6
        assert set(status_of(pg_database, ids[:4]).values()) == {("scheduled", "coalescing")}
    finally:
        app.close()


def failing_enqueue(_deliveries: Any) -> None:
    raise ConnectionError("broker unreachable")


def test_a_release_whose_enqueue_fails_is_held_again_and_released_next_round(
    app: Notifier, database: Database
) -> None:
    ids = planned(app, 2)
    app.deliveries.hold(ids, datetime.now(UTC) - timedelta(minutes=1), HoldReason.QUIET_HOURS)
    broken = Sweeper(app.deliveries, SweeperSettings(), failing_enqueue)
    with pytest.raises(ConnectionError):
        broken.sweep()
    assert {s for s, _ in status_of(database, ids).values()} == {"scheduled"}
    enqueued: list[tuple[UUID, str]] = []
    working = Sweeper(app.deliveries, SweeperSettings(), enqueued.extend)
    assert working.sweep() == len(ids)
    assert sorted(d for d, _ in enqueued) == sorted(ids)
    assert working.sweep() == 0


def test_a_release_whose_message_is_lost_in_a_crash_is_found_by_the_stale_sweep(
    app: Notifier, database: Database
) -> None:
    settings = SweeperSettings(stale_after_s=600)
    with time_machine.travel(NIGHT, tick=False) as clock:
        ids = planned(app, 1)
        app.deliveries.hold(ids, MORNING, HoldReason.QUIET_HOURS)
        clock.move_to(MORNING)
        # The worker died between the release's commit and its enqueue.
        assert len(app.deliveries.release_due(100)) == len(ids)
        enqueued: list[tuple[UUID, str]] = []
        sweeper = Sweeper(app.deliveries, settings, enqueued.extend)
        assert sweeper.sweep() == 0  # not yet stale: its message may still be on its way
        clock.move_to(MORNING + timedelta(seconds=601))
        assert sweeper.sweep() == len(ids)
        assert sorted(d for d, _ in enqueued) == sorted(ids)


def test_a_delivery_held_past_the_max_age_is_still_sent_once_when_released(
    tmp_path: Path,
) -> None:
    """The worker's max age counts from the due time: a delivery held overnight (or
    longer than a day) is not expired on release."""
    app = build_app(tmp_path, worker={"max_age_s": 3600})
    with time_machine.travel(NIGHT, tick=True) as clock, RunningWorker(app) as running:
        submit(app, sample_event(1, event_id=uuid.uuid4()))
        wait_until(lambda: [r for r in rows(app) if r["status"] == "sent"])
        MailA.sent.clear()
        second = sample_event(2, event_id=uuid.uuid4())
        app.ingest.handle(json.dumps(second, ensure_ascii=False), source="test")
        [held] = [r["delivery_id"] for r in rows(app) if r["status"] == "queued"]
        due = NIGHT + timedelta(hours=30)
        assert app.deliveries.hold([held], due, HoldReason.QUIET_HOURS) == [held]
        app.enqueue_deliveries([(held, "email")])  # a stray message: it does nothing
        app.broker.join(app.queue_name("email"))
        running.worker.join()
        assert status_of(app.database, [held])[held] == ("scheduled", "quiet_hours")
        clock.move_to(due)
        assert app.sweeper.sweep() == 1
        wait_until(lambda: [r for r in rows(app) if r["status"] == "sent"][1:])
        assert app.sweeper.sweep() == 0
    by_id = {r["delivery_id"]: r for r in rows(app)}
    assert by_id[held]["status"] == DeliveryStatus.SENT
    assert by_id[held]["attempts"] == 1
    assert [m.delivery_id for m in MailA.sent] == [held]
