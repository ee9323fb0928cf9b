"""Coalescing (issue 19, item 1) on the one held mechanism: a dossier's status changes
within a channel's window make one message, the latest status's; the older ones become
``superseded``, linked to it; ``always`` statuses are never superseded. On SQLite and
PostgreSQL, with a controlled clock (time-machine), and a property test over random
status sequences and timings."""

from __future__ import annotations

import itertools
import json
import shutil
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.plugins.registry import Registry
from notifier.store import Database
from notifier.store.deliveries.lifecycle import CoalescingKey, DeliveryStatus
from notifier.store.migrate import upgrade
from notifier.store.schema import deliveries, events, status_outbox
from tests.support import REPO, make_settings, wait_until
from tests.test_pipeline import MailA, Sms

T0 = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)  # 08:00 in Vietnam
WINDOW = 120
ALWAYS = (Status.REFUSED, Status.SUPPLEMENT_REQUESTED, Status.RESULT_READY)


def write_config(root: Path, *, windows: dict[str, int], always: tuple[Status, ...]) -> Path:
    """A config dir: the real templates, every status to email and SMS, and windows."""
    config = root / "config"
    shutil.copytree(REPO / "config" / "templates", config / "templates", dirs_exist_ok=True)
    statuses = "\n".join(f'{s.value} = ["email", "sms"]' for s in Status)
    window_table = ", ".join(f"{c} = {w}" for c, w in windows.items())
    always_list = ", ".join(f'"{s.value}"' for s in always)
    (config / "routing.toml").write_text(
        f"[statuses]\n{statuses}\n\n[coalescing]\nwindow_s = {{ {window_table} }}\n"
        f"always = [{always_list}]\n",
        "utf-8",
    )
    return config


def scripted_app(config: Path, database_url: str) -> Notifier:
    settings = make_settings(
        config_dir=config,
        database_url=database_url,
        channels={"email": {"providers": ["mail_a"]}, "sms": {"providers": ["sms_gw"]}},
    )
    registry = Registry.from_settings(settings, installed={"mail_a": MailA, "sms_gw": Sms})
    app = Notifier(settings, registry=registry)
    upgrade(app.database)
    return app


@pytest.fixture
def app(tmp_path: Path, database: Database) -> Iterator[Notifier]:
    config = write_config(tmp_path, windows={"sms": WINDOW, "email": 0}, always=ALWAYS)
    notifier = scripted_app(config, database.url)
    yield notifier
    notifier.close()


_dossiers = itertools.count(1)


def news(index: int, status: Status, at: datetime) -> dict[str, Any]:
    """An event of dossier ``index`` (same dossier, citizen and contacts for one index)."""
    event = sample_event(index, status=status, event_id=uuid.uuid4())
    event["occurred_at"] = at.isoformat()
    return event


def ingest(app: Notifier, event: dict[str, Any]) -> list[tuple[UUID, str]]:
    """Ingest one event; what ingest enqueues at once (deliveries not held)."""
    result = app.ingest.handle(json.dumps(event, ensure_ascii=False), source="test")
    assert result.outcome == "accepted", result.reason
    return result.to_enqueue


def dossier_rows(app: Notifier, dossier_code: str, channel: str) -> list[dict[str, Any]]:
    d, e = deliveries.c, events.c
    with app.database.engine.connect() as connection:
        found = connection.execute(
            sa.select(
                d.delivery_id,
                d.event_id,
                d.status,
                d.event_status,
                d.superseded_by,
                d.due_at,
                d.hold_reason,
                e.occurred_at,
            )
            .select_from(deliveries.join(events, e.event_id == d.event_id))
            .where(d.dossier_code == dossier_code, d.channel == channel)
            .order_by(e.occurred_at)
        )
        return [dict(row._mapping) for row in found]


def test_three_statuses_within_the_window_send_one_sms_of_the_latest_and_every_email(
    app: Notifier,
) -> None:
    index = next(_dossiers)
    with time_machine.travel(T0, tick=False) as clock:
        code = news(index, Status.RECEIVED, T0)["dossier"]["code"]
        immediate: list[tuple[UUID, str]] = []
        for offset, status in ((0, Status.RECEIVED), (30, Status.PROCESSING), (60, Status.STOPPED)):
            clock.move_to(T0 + timedelta(seconds=offset))
            immediate += ingest(app, news(index, status, T0 + timedelta(seconds=offset)))
        # Email has no window: each status's email went at once; no SMS yet.
        assert sorted(channel for _id, channel in immediate) == ["email"] * 3
        clock.move_to(T0 + timedelta(seconds=WINDOW - 1))
        assert app.deliveries.release_due(100) == []
        # The window counts from the first held status, and does not slide.
        clock.move_to(T0 + timedelta(seconds=WINDOW))
        released = app.deliveries.release_due(100)
        assert app.deliveries.release_due(100) == []
    sms = dossier_rows(app, code, "sms")
    assert [r["event_status"] for r in sms] == ["received", "processing", "stopped"]
    kept = sms[-1]
    assert released == [(kept["delivery_id"], "sms")]
    assert kept["status"] == DeliveryStatus.QUEUED
    assert kept["superseded_by"] is None
    for older in sms[:-1]:
        assert older["status"] == DeliveryStatus.SUPERSEDED
        assert older["superseded_by"] == kept["delivery_id"]  # linked to the one sent
    assert {r["status"] for r in dossier_rows(app, code, "email")} == {"queued"}
    # Superseded is final: each is announced once on the status stream, the kept one not yet.
    with app.database.engine.connect() as connection:
        announced = [
            (body["delivery"]["id"], body["type"])
            for body in connection.execute(sa.select(status_outbox.c.body)).scalars()
            if body["delivery"] is not None and body["delivery"]["channel"] == "sms"
        ]
    assert sorted(announced) == sorted(
        (str(older["delivery_id"]), "delivery.superseded") for older in sms[:-1]
    )


def test_an_always_status_is_sent_at_once_and_supersedes_the_held_ones_before_it(
    app: Notifier,
) -> None:
    index = next(_dossiers)
    with time_machine.travel(T0, tick=False) as clock:
        code = news(index, Status.RECEIVED, T0)["dossier"]["code"]
        ingest(app, news(index, Status.RECEIVED, T0))
        clock.move_to(T0 + timedelta(seconds=20))
        ingest(app, news(index, Status.PROCESSING, T0 + timedelta(seconds=20)))
        clock.move_to(T0 + timedelta(seconds=40))
        immediate = ingest(app, news(index, Status.RESULT_READY, T0 + timedelta(seconds=40)))
        assert sorted(c for _id, c in immediate) == ["email", "sms"]
        clock.move_to(T0 + timedelta(hours=1))
        assert app.deliveries.release_due(100) == []  # nothing left waiting
    sms = dossier_rows(app, code, "sms")
    result = sms[-1]
    assert result["event_status"] == "result_ready"
    assert result["status"] == DeliveryStatus.QUEUED
    assert result["hold_reason"] is None  # never held
    assert [r["superseded_by"] for r in sms[:-1]] == [result["delivery_id"]] * 2


def test_an_always_status_is_never_superseded_by_a_later_one(app: Notifier) -> None:
    index = next(_dossiers)
    with time_machine.travel(T0, tick=False) as clock:
        code = news(index, Status.RECEIVED, T0)["dossier"]["code"]
        first = ingest(app, news(index, Status.SUPPLEMENT_REQUESTED, T0))
        clock.move_to(T0 + timedelta(seconds=10))
        ingest(app, news(index, Status.PROCESSING, T0 + timedelta(seconds=10)))
        clock.move_to(T0 + timedelta(seconds=WINDOW + 10))
        released = app.deliveries.release_due(100)
    sms = dossier_rows(app, code, "sms")
    assert [r["status"] for r in sms] == ["queued", "queued"]
    assert (sms[0]["delivery_id"], "sms") in first
    assert released == [(sms[1]["delivery_id"], "sms")]


def test_news_that_arrives_late_does_not_replace_the_newer_status(app: Notifier) -> None:
    """Events can arrive out of order: the latest by occurred_at is the one kept."""
    index = next(_dossiers)
    with time_machine.travel(T0 + timedelta(seconds=30), tick=False) as clock:
        code = news(index, Status.RECEIVED, T0)["dossier"]["code"]
        ingest(app, news(index, Status.PROCESSING, T0 + timedelta(seconds=20)))
        ingest(app, news(index, Status.RECEIVED, T0))  # older news, delivered late
        clock.move_to(T0 + timedelta(seconds=30 + WINDOW))
        released = app.deliveries.release_due(100)
    sms = dossier_rows(app, code, "sms")
    assert [r["event_status"] for r in sms] == ["received", "processing"]
    assert sms[0]["status"] == DeliveryStatus.SUPERSEDED
    assert released == [(sms[1]["delivery_id"], "sms")]


def test_statuses_further_apart_than_the_window_are_each_sent(app: Notifier) -> None:
    index = next(_dossiers)
    with time_machine.travel(T0, tick=False) as clock:
        code = news(index, Status.RECEIVED, T0)["dossier"]["code"]
        ingest(app, news(index, Status.RECEIVED, T0))
        clock.move_to(T0 + timedelta(seconds=WINDOW))
        first = app.deliveries.release_due(100)
        clock.move_to(T0 + timedelta(seconds=WINDOW + 1))
        ingest(app, news(index, Status.PROCESSING, T0 + timedelta(seconds=WINDOW + 1)))
        clock.move_to(T0 + timedelta(seconds=2 * WINDOW + 1))
        second = app.deliveries.release_due(100)
    sms = dossier_rows(app, code, "sms")
    assert [r["status"] for r in sms] == ["queued", "queued"]
    assert first + second == [(r["delivery_id"], "sms") for r in sms]


# -- the property: the citizen always gets the final status and every always status, once

STATUSES = st.sampled_from(list(Status))
STEPS = st.lists(st.tuples(STATUSES, st.integers(min_value=0, max_value=3 * WINDOW)), max_size=8)


@pytest.fixture(scope="module")
def sqlite_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notifier]:
    root = tmp_path_factory.mktemp("coalescing")
    config = write_config(root, windows={"sms": WINDOW}, always=ALWAYS)
    notifier = scripted_app(config, f"sqlite:///{root}/property.db")
    yield notifier
    notifier.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=STATUSES, steps=STEPS, release_between=st.booleans())
def test_the_citizen_gets_the_final_status_and_every_always_status_exactly_once(
    sqlite_app: Notifier,
    first: Status,
    steps: list[tuple[Status, int]],
    release_between: bool,
) -> None:
    app = sqlite_app
    index = next(_dossiers)
    code = news(index, first, T0)["dossier"]["code"]
    sent: list[UUID] = []  # deliveries handed to the send path, in order
    arrived: list[tuple[datetime, int, str]] = []  # (occurred_at, arrival, event id)
    now = T0
    with time_machine.travel(T0, tick=False) as clock:
        for status, gap in [(first, 0), *steps]:
            now += timedelta(seconds=gap)
            clock.move_to(now)
            if release_between:  # the sweeper runs between events
                sent += [d for d, _c in app.deliveries.release_due(1000)]
            event = news(index, status, now)
            arrived.append((now, len(arrived), event["event_id"]))
            sent += [d for d, c in ingest(app, event) if c == "sms"]
        clock.move_to(now + timedelta(seconds=WINDOW))
        sent += [d for d, _c in app.deliveries.release_due(1000)]
        assert app.deliveries.release_due(1000) == []
    sms = dossier_rows(app, code, "sms")
    assert len(sent) == len(set(sent)), "a delivery went to the send path twice"
    by_id = {r["delivery_id"]: r for r in sms}
    # The final status (the latest news; of news at the same moment, the last to
    # arrive) reaches the citizen.
    final_event = max(arrived)[2]
    [final] = [r for r in sms if str(r["event_id"]) == final_event]
    assert final["delivery_id"] in sent
    # Every always status reaches the citizen.
    for row in sms:
        if Status(row["event_status"]) in ALWAYS:
            assert row["delivery_id"] in sent
    # What was not sent was superseded by a later status that was.
    for row in sms:
        if row["delivery_id"] in sent:
            assert row["status"] == DeliveryStatus.QUEUED
            continue
        assert row["status"] == DeliveryStatus.SUPERSEDED
        survivor = by_id[row["superseded_by"]]
        assert survivor["occurred_at"] >= row["occurred_at"]
        assert survivor["delivery_id"] in sent


def test_workers_ingesting_news_of_one_dossier_on_postgresql_take_turns_and_keep_one(
    tmp_path: Path, pg_database: Database
) -> None:
    """While one transaction holds a dossier (as a worker mid-ingest does), other
    workers' news of that dossier waits for it; then each is coalesced in turn and
    exactly one delivery stays held: the latest news."""
    config = write_config(tmp_path, windows={"sms": WINDOW}, always=())
    app = scripted_app(config, pg_database.url)
    index = next(_dossiers)
    start = datetime.now(UTC)
    statuses = [Status.RECEIVED, Status.PROCESSING] * 3
    batch = [news(index, s, start + timedelta(seconds=i)) for i, s in enumerate(statuses)]
    code = batch[0]["dossier"]["code"]
    # The key is the dossier's, whatever the channel and recipient.
    key = CoalescingKey(batch[0]["agency"]["code"], code, "sms", "")
    failures: list[BaseException] = []

    def ingest_one(event: dict[str, Any]) -> None:
        try:
            ingest(app, event)
        except BaseException as exc:  # reported below, with the test's own message
            failures.append(exc)

    threads = [threading.Thread(target=ingest_one, args=(event,)) for event in batch]
    try:
        with app.database.begin() as holder:
            app.deliveries.lock_dossiers(holder, [key])
            for thread in threads:
                thread.start()
            # Every worker is waiting for the dossier's lock, none has recorded anything.
            wait_until(lambda: advisory_waiters(pg_database) == len(threads))
            assert dossier_rows(app, code, "sms") == []
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        sms = dossier_rows(app, code, "sms")
        assert len(sms) == len(batch)
        held = [r for r in sms if r["status"] == DeliveryStatus.SCHEDULED]
        assert [str(r["event_id"]) for r in held] == [batch[-1]["event_id"]]  # the latest
        assert all(r["superseded_by"] == held[0]["delivery_id"] for r in sms if r not in held)
    finally:
        app.close()


def advisory_waiters(database: Database) -> int:
    """Backends of this database waiting for an advisory lock."""
    with database.engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            ).scalar_one()
        )
