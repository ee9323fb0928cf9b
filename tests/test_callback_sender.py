"""The callback sender on a controlled clock, against a real local receiver that verifies
every signature: backoff while the receiver is down, its Retry-After honoured in both
forms, the give-up age into dead letters, replay, and the SSRF rules at send time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import sqlalchemy as sa

from notifier.pipeline.callbacks import CallbackSender
from notifier.settings import CallbackSettings
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.callbacks import CallbackStatus, CallbackStore, IncomingStatus
from notifier.store.schema import callback_deliveries, callback_targets
from notifier.webhooks import new_secret
from tests.callback_receiver import CallbackReceiver


class Clock:
    """Starts at the real time (the receiver checks webhook-timestamp against its own
    clock, within five minutes) and moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.fromtimestamp(int(time.time()), UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


SETTINGS = CallbackSettings(
    min_backoff_s=10,
    max_backoff_s=100,
    max_age_s=200,
    allowed_networks=["127.0.0.1/32"],
    allow_http=True,
    timeout_s=5,
)


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[CallbackReceiver]:
    with CallbackReceiver([secret]) as served:
        yield served


@pytest.fixture
def store(database: Database, receiver: CallbackReceiver, secret: str) -> CallbackStore:
    ApiKeys(database).create("mot-cua", ["publish"], ["H29"])
    found = CallbackStore(database, "k" * 40)
    found.set_target("api-key", "mot-cua", receiver.url, secret)
    return found


def _statuses(count: int) -> list[IncomingStatus]:
    return [
        IncomingStatus(
            id=f"st-{n}",
            type="delivery.delivered",
            agency="H29",
            sequence=n,
            body=(
                f'{{"schema": "notifier.status.v1", "id": "st-{n}", "agency": "H29", '
                f'"sequence": {n}, "type": "delivery.delivered"}}'
            ),
        )
        for n in range(count)
    ]


def _rows(store: CallbackStore) -> list[sa.Row[tuple[object, ...]]]:
    c = callback_deliveries.c
    with store.database.engine.connect() as connection:
        return list(connection.execute(sa.select(callback_deliveries).order_by(c.message_id)))


def _sender(
    store: CallbackStore, clock: Clock, settings: CallbackSettings = SETTINGS
) -> CallbackSender:
    return CallbackSender(store, settings, clock=clock, rng=lambda: 1.0)


def test_each_status_is_delivered_signed_with_its_sequence_and_once(
    store: CallbackStore, receiver: CallbackReceiver
) -> None:
    clock = Clock()
    store.record(_statuses(3), clock())
    sender = _sender(store, clock)
    with httpx.Client() as client:
        assert sender.run_once(client) == 3
        assert sender.run_once(client) == 0
    assert receiver.received.bad_signatures == 0
    assert set(receiver.received.bodies) == {"st-0", "st-1", "st-2"}
    assert receiver.received.bodies["st-2"]["sequence"] == 2
    assert {h["notifier-sequence"] for h in receiver.received.headers} == {"0", "1", "2"}
    assert {row.status for row in _rows(store)} == {CallbackStatus.DELIVERED.value}


def test_a_receiver_that_is_down_is_tried_again_with_doubling_backoff(
    store: CallbackStore, receiver: CallbackReceiver
) -> None:
    clock = Clock()
    store.record(_statuses(1), clock())
    sender = _sender(store, clock)
    receiver.down()
    started = clock()
    with httpx.Client() as client:
        sender.run_once(client)
        (row,) = _rows(store)
        assert row.attempts == 1
        assert row.due_at == started + timedelta(seconds=10)  # min_backoff_s, no jitter
        assert "unreachable" in row.last_error
        clock.advance(9)
        assert sender.run_once(client) == 0  # not due yet
        clock.advance(1)
        assert sender.run_once(client) == 1
        assert _rows(store)[0].due_at == clock() + timedelta(seconds=20)
        receiver.up()
        clock.advance(20)
        assert sender.run_once(client) == 1
    (row,) = _rows(store)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 3, 200)
    assert receiver.received.tries == {"st-0": 1}


@pytest.mark.parametrize("status", [429, 503])
def test_the_receivers_retry_after_in_seconds_or_as_an_http_date_is_honoured(
    store: CallbackStore, receiver: CallbackReceiver, status: int
) -> None:
    clock = Clock()
    store.record(_statuses(1), clock())
    sender = _sender(store, clock)
    with httpx.Client() as client:
        receiver.answer(status, "37")
        sender.run_once(client)
        (row,) = _rows(store)
        assert (row.due_at, row.last_status_code) == (clock() + timedelta(seconds=37), status)
        clock.advance(37)
        # An HTTP date is read on our clock, not the machine's.
        receiver.answer(status, format_datetime(clock() + timedelta(seconds=55), usegmt=True))
        sender.run_once(client)
        assert _rows(store)[0].due_at == clock() + timedelta(seconds=55)
        clock.advance(55)
        receiver.answer(200)
        sender.run_once(client)
    assert _rows(store)[0].status == CallbackStatus.DELIVERED.value
    assert receiver.received.refused == 2


def test_a_callback_older_than_the_give_up_age_is_a_dead_letter_and_replay_sends_it(
    store: CallbackStore, receiver: CallbackReceiver
) -> None:
    clock = Clock()
    store.record(_statuses(1), clock())
    sender = _sender(store, clock)
    receiver.answer(500)
    with httpx.Client() as client:
        tries = 0
        while _rows(store)[0].status == CallbackStatus.PENDING.value:
            tries += sender.run_once(client)
            clock.advance(10)
        (row,) = _rows(store)
        # 10 + 20 + 40 + 80 = 150 s of waits; the next (100) would pass 200 s: given up.
        assert (row.status, tries, row.last_status_code) == ("dead", 5, 500)
        assert [d.message_id for d in store.dead_letters()] == ["st-0"]
        receiver.answer(200)
        assert store.replay(None, now=clock()) == 1
        assert sender.run_once(client) == 1
    assert _rows(store)[0].status == CallbackStatus.DELIVERED.value
    assert store.dead_count() == 0
    health = store.health()[0]
    assert (health.consecutive_failures, health.last_success_at) == (0, clock())


def test_a_destination_the_ssrf_rules_refuse_is_never_connected_to(
    store: CallbackStore, receiver: CallbackReceiver
) -> None:
    clock = Clock()
    store.record(_statuses(1), clock())
    strict = SETTINGS.model_copy(update={"allowed_networks": [], "allow_http": True})
    with httpx.Client() as client:
        _sender(store, clock, strict).run_once(client)
    (row,) = _rows(store)
    assert row.status == CallbackStatus.PENDING.value
    assert "loopback" in row.last_error
    assert receiver.received.headers == []
    with store.database.engine.connect() as connection:
        error = connection.execute(sa.select(callback_targets.c.last_error)).scalar_one()
    assert "loopback" in error
