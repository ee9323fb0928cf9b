"""The per-provider token bucket (saved-up tokens never outnumber free call slots), the
circuit breaker, and the circuit state operators are shown: pure, on a clock the tests
hold (no sleeps)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from notifier.pipeline.guard import Admission, NoGuard, ProviderCall
from notifier.pipeline.protection import CircuitBreaker, ProviderGuard, TokenBucket
from notifier.settings import ProviderPolicy
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.health import CircuitState, shown_circuit_state
from notifier.store.migrate import upgrade


def test_a_full_bucket_lets_the_burst_through_then_paces() -> None:
    bucket = TokenBucket(rate=20, burst=5, now=0.0)
    waits = [bucket.reserve(now=0.0) for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert waits[5] == pytest.approx(0.05)
    assert waits[6] == pytest.approx(0.1)


def test_calls_still_in_flight_do_not_save_tokens_for_later() -> None:
    bucket = TokenBucket(rate=20, burst=5, now=0.0)
    for _ in range(5):
        assert bucket.reserve(now=0.0) == 0.0
    # The five calls are stuck (their client opening connections) long enough for six
    # tokens to accrue; had they been saved, the next five would go out at once and
    # reach the provider together with the stuck ones.
    bucket.finish()
    assert bucket.reserve(now=0.3) == 0.0  # the slot the finished call freed
    wait = bucket.reserve(now=0.3)
    assert wait is not None
    assert wait > 0.0  # no more saved up while four are in flight


def test_a_wait_over_the_limit_takes_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=0.0)
    assert bucket.reserve(now=0.0, max_wait=0.5) == 0.0
    assert bucket.reserve(now=0.0, max_wait=0.5) is None  # would wait 1 s
    bucket.finish()
    assert bucket.reserve(now=0.0, max_wait=2.0) == pytest.approx(1.0)  # the refused took none


def test_tokens_come_back_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    for _ in range(2):
        assert bucket.reserve(now=0.0) == 0.0
        bucket.finish()
    # An hour idle saves up the burst, not 36,000 tokens.
    waits = []
    for _ in range(3):
        waits.append(bucket.reserve(now=3600.0))
        bucket.finish()
    assert waits == [0.0, 0.0, pytest.approx(0.1)]


# -- the circuit breaker ------------------------------------------------------------------


def test_a_circuit_opens_after_the_set_number_of_provider_faults_in_a_row() -> None:
    circuit = CircuitBreaker(failures_to_open=3, open_s=30)
    assert circuit.record(provider_fault=True, now=0.0) is None
    assert circuit.record(provider_fault=True, now=1.0) is None
    assert circuit.admit(now=1.0)
    assert circuit.record(provider_fault=True, now=2.0) == (CircuitState.OPEN, 3)
    assert circuit.state is CircuitState.OPEN
    assert not circuit.admit(now=2.0)
    assert not circuit.admit(now=31.9)


def test_a_success_between_faults_starts_the_count_again() -> None:
    circuit = CircuitBreaker(failures_to_open=2, open_s=30)
    circuit.record(provider_fault=True, now=0.0)
    assert circuit.record(provider_fault=False, now=1.0) is None  # closed stays closed
    assert circuit.record(provider_fault=True, now=2.0) is None
    assert circuit.state is CircuitState.CLOSED


def test_after_its_pause_an_open_circuit_lets_exactly_one_trial_call_through() -> None:
    circuit = CircuitBreaker(failures_to_open=1, open_s=30)
    circuit.record(provider_fault=True, now=0.0)
    assert circuit.admit(now=30.0)
    assert circuit.state is CircuitState.HALF_OPEN
    assert not circuit.admit(now=30.0)  # the trial is out: the others wait
    assert not circuit.admit(now=45.0)


def test_a_successful_trial_closes_the_circuit() -> None:
    circuit = CircuitBreaker(failures_to_open=1, open_s=30)
    circuit.record(provider_fault=True, now=0.0)
    assert circuit.admit(now=30.0)
    assert circuit.record(provider_fault=False, now=30.5) == (CircuitState.CLOSED, 0)
    assert circuit.admit(now=30.5)
    assert circuit.admit(now=30.5)  # no trial any more: every call goes


def test_a_failed_trial_reopens_the_circuit_for_another_pause() -> None:
    circuit = CircuitBreaker(failures_to_open=5, open_s=30)
    for second in range(5):
        circuit.record(provider_fault=True, now=float(second))
    assert circuit.admit(now=40.0)  # half-open: one trial
    assert circuit.record(provider_fault=True, now=40.0) == (CircuitState.OPEN, 6)
    assert not circuit.admit(now=69.9)
    assert circuit.admit(now=70.0)


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


# -- the guard the Sender holds around each call ------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard(tmp_path: Path, clock: _Clock, **policy: Any) -> ProviderGuard:
    database = Database(f"sqlite:///{tmp_path / 'health.db'}")
    upgrade(database)
    return ProviderGuard(database, {"esms": ProviderPolicy(**policy)}, clock=clock)


def _admissions(guard: ProviderGuard, count: int, max_wait_s: float = 0.5) -> list[Admission]:
    """Make ``count`` calls one after another (each ends before the next starts)."""

    async def calls() -> list[Admission]:
        seen = []
        for _ in range(count):
            async with guard.call("esms", max_wait_s) as admission:
                seen.append(admission)
        return seen

    return asyncio.run(calls())


def test_the_guard_gives_a_call_back_when_its_token_is_further_off_than_it_may_wait(
    tmp_path: Path,
) -> None:
    clock = _Clock()
    guard = _guard(tmp_path, clock, rate_per_s=1, burst=1)
    try:
        assert _admissions(guard, 2) == [Admission.ADMITTED, Admission.RATE_LIMITED]
        clock.now = 1.0  # a token has come back; the refused call took none
        assert _admissions(guard, 1) == [Admission.ADMITTED]
    finally:
        guard.close()


def test_the_guard_refuses_calls_while_the_providers_circuit_is_open(tmp_path: Path) -> None:
    clock = _Clock()
    guard = _guard(tmp_path, clock, circuit_failures=2, circuit_open_s=30)
    try:
        for _ in range(2):
            guard.observe(ProviderCall("sms", "esms", DeliveryStatus.TEMPORARY_FAILURE, 0.1))
        assert _admissions(guard, 1) == [Admission.CIRCUIT_OPEN]
        clock.now = 30.0
        assert _admissions(guard, 2) == [Admission.ADMITTED, Admission.CIRCUIT_OPEN]  # 1 trial
        guard.flush()
    finally:
        guard.close()


def test_a_recipients_own_failure_never_opens_the_circuit(tmp_path: Path) -> None:
    clock = _Clock()
    guard = _guard(tmp_path, clock, circuit_failures=1)
    try:
        guard.observe(ProviderCall("sms", "esms", DeliveryStatus.PERMANENT_FAILURE, 0.1))
        assert _admissions(guard, 1) == [Admission.ADMITTED]
        guard.flush()
    finally:
        guard.close()


def test_the_no_op_guard_admits_every_call() -> None:
    async def calls() -> list[Admission]:
        seen = []
        for _ in range(3):
            async with NoGuard().call("esms", 0.0) as admission:
                seen.append(admission)
        return seen

    assert asyncio.run(calls()) == [Admission.ADMITTED] * 3
