"""The per-provider token bucket (saved-up tokens never outnumber free call slots) and
the circuit state operators are shown."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from notifier.pipeline.protection import TokenBucket
from notifier.store.health import CircuitState, shown_circuit_state


def test_a_full_bucket_lets_the_burst_through_then_paces() -> None:
    bucket = TokenBucket(rate=20, burst=5)
    waits = [bucket.reserve() for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert 0.04 < waits[5] <= 0.05
    assert 0.09 < waits[6] <= 0.1


def test_calls_still_in_flight_do_not_save_tokens_for_later() -> None:
    bucket = TokenBucket(rate=20, burst=5)
    for _ in range(5):
        assert bucket.reserve() == 0.0
    # The five calls are stuck (their client opening connections) long enough for six
    # tokens to accrue; had they been saved, the next five would go out at once and
    # reach the provider together with the stuck ones.
    time.sleep(0.3)
    bucket.finish()
    assert bucket.reserve() == 0.0  # the slot the finished call freed
    assert bucket.reserve() > 0.0  # no more saved up while four are in flight


def test_a_wait_over_the_limit_takes_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.reserve(max_wait=0.5) == 0.0
    assert bucket.reserve(max_wait=0.5) is None  # would wait ~1 s
    bucket.finish()
    wait = bucket.reserve(max_wait=2.0)
    assert wait is not None
    assert 0.9 < wait <= 1.0  # the refused call took no token


# -- the circuit state operators see -----------------------------------------------------

T0 = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


def _shown(recorded: str, **times: datetime | None) -> CircuitState:
    values: dict[str, Any] = {
        "opened_at": T0,
        "open_until": T0 + timedelta(minutes=10),
        "last_success_at": None,
        "updated_at": T0,
        "now": T0 + timedelta(minutes=1),
    }
    values.update(times)
    return shown_circuit_state(recorded, **values)


def test_an_open_circuit_shows_open_until_its_pause_ends_without_a_success() -> None:
    assert _shown("open") is CircuitState.OPEN


def test_a_success_after_the_circuit_opened_shows_it_closed_whoever_opened_it() -> None:
    assert _shown("open", last_success_at=T0 + timedelta(seconds=5)) is CircuitState.CLOSED
    assert _shown("half-open", last_success_at=T0 + timedelta(seconds=5)) is CircuitState.CLOSED


def test_a_success_before_the_circuit_opened_does_not_close_it() -> None:
    assert _shown("open", last_success_at=T0 - timedelta(seconds=5)) is CircuitState.OPEN


def test_an_open_circuit_past_its_pause_shows_half_open_a_trial_is_due() -> None:
    assert _shown("open", now=T0 + timedelta(minutes=11)) is CircuitState.HALF_OPEN


def test_a_row_written_before_opened_at_existed_falls_back_to_its_update_time() -> None:
    late = T0 + timedelta(seconds=30)
    assert _shown("open", opened_at=None, last_success_at=late) is CircuitState.CLOSED
    assert _shown("open", opened_at=None, updated_at=late + timedelta(seconds=1)) is (
        CircuitState.OPEN
    )


def test_a_closed_circuit_stays_closed() -> None:
    assert _shown("closed", now=T0 + timedelta(days=1)) is CircuitState.CLOSED
