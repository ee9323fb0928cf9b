"""Provider rate limits shared by every process (notifier.pipeline.sharedlimit through
ProviderGuard): two guards stand for two machines; the store is the in-process memory://
store or a Redis address nobody listens on (a store that is down). Clocks are held by
the tests; no sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.pipeline.guard import Admission
from notifier.pipeline.protection import ProviderGuard
from notifier.pipeline.sharedlimit import RETRY_BACKEND_S, window_for
from notifier.settings import LimitsSettings, ProviderPolicy
from notifier.store import Database
from notifier.store.migrate import upgrade
from tests.support import make_settings

# Port 1 on loopback: connection refused at once, as from a Redis that is down.
DOWN_REDIS = "redis://127.0.0.1:1/0"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _machine(
    tmp_path: Path, name: str, limits: LimitsSettings, clock: _Clock, rate: float, burst: int
) -> ProviderGuard:
    """One machine's guard: a worker process that thinks it is the only one (processes=1)."""
    database = Database(f"sqlite:///{tmp_path / f'{name}.db'}")
    upgrade(database)
    policy = ProviderPolicy(rate_per_s=rate, burst=burst)
    return ProviderGuard(database, {"esms": policy}, processes=1, clock=clock, limits=limits)


async def _calls(guards: list[ProviderGuard], rounds: int) -> list[Admission]:
    """Each guard in turn makes a call that may not wait, ``rounds`` times over."""
    seen = []
    for _ in range(rounds):
        for guard in guards:
            async with guard.call("esms", 0.0) as admission:
                seen.append(admission)
    return seen


@pytest.mark.parametrize(
    ("rate", "calls", "seconds"),
    [(20.0, 20, 1), (2.5, 2, 1), (1.0, 1, 1), (0.5, 1, 2), (0.3, 1, 4)],
)
def test_a_providers_window_is_whole_seconds_and_never_allows_more_than_its_rate(
    rate: float, calls: int, seconds: int
) -> None:
    window = window_for(rate)
    assert (window.amount, window.get_expiry()) == (calls, seconds)


@given(st.floats(min_value=0.01, max_value=10_000))
def test_no_rate_gets_a_window_that_lets_more_calls_through_than_the_rate(rate: float) -> None:
    window = window_for(rate)
    assert window.amount >= 1
    assert window.amount / window.get_expiry() <= rate * (1 + 1e-9)


def test_two_machines_sharing_the_store_get_the_providers_rate_between_them(
    tmp_path: Path,
) -> None:
    clock = _Clock()
    limits = LimitsSettings(storage_url="memory://")
    machines = [_machine(tmp_path, n, limits, clock, rate=5, burst=5) for n in ("a", "b")]
    try:
        seen = asyncio.run(_calls(machines, rounds=5))
    finally:
        for guard in machines:
            guard.close()
    # Alone, each would take its full 5 (10 in all): shared, the provider gets 5.
    assert seen.count(Admission.ADMITTED) == 5
    assert seen.count(Admission.RATE_LIMITED) == 5


def test_without_a_store_each_machine_keeps_its_own_limit_as_before(tmp_path: Path) -> None:
    clock = _Clock()
    machines = [_machine(tmp_path, n, LimitsSettings(), clock, rate=5, burst=5) for n in "ab"]
    try:
        seen = asyncio.run(_calls(machines, rounds=5))
    finally:
        for guard in machines:
            guard.close()
    assert seen.count(Admission.ADMITTED) == 10


def test_a_store_that_is_down_holds_rate_limited_sends_without_raising(tmp_path: Path) -> None:
    clock = _Clock()
    guard = _machine(tmp_path, "a", LimitsSettings(storage_url=DOWN_REDIS), clock, 100, 10)
    try:
        assert asyncio.run(_calls([guard], rounds=3)) == [Admission.RATE_LIMITED] * 3
        shared = guard._shared
        assert shared is not None
        assert shared.backend_down()  # not asked again on every call...
        clock.now = RETRY_BACKEND_S
        assert not shared.backend_down()  # ...but again once its pause is over
    finally:
        guard.close()


def test_a_store_that_is_down_falls_back_to_each_processs_stated_share(tmp_path: Path) -> None:
    clock = _Clock()
    limits = LimitsSettings(storage_url=DOWN_REDIS, fallback_processes=2)
    guard = _machine(tmp_path, "a", limits, clock, rate=4, burst=4)
    try:
        # Half of the burst (4 // 2) at once, then nothing until the clock moves.
        seen = asyncio.run(_calls([guard], rounds=3))
        assert seen == [Admission.ADMITTED, Admission.ADMITTED, Admission.RATE_LIMITED]
    finally:
        guard.close()


def test_the_store_setting_takes_redis_urls_and_names_the_variable_for_anything_else() -> None:
    from notifier.settings import SettingsError

    settings = make_settings(limits={"storage_url": "redis://:pw@10.0.0.7:6379/2"})
    assert settings.limits.storage_url == "redis://:pw@10.0.0.7:6379/2"
    assert make_settings().limits.storage_url is None
    with pytest.raises(SettingsError) as caught:
        make_settings(limits={"storage_url": "http://10.0.0.7:6379"})
    assert "NOTIFIER_LIMITS__STORAGE_URL" in str(caught.value)
    assert "10.0.0.7" not in str(caught.value)  # a URL may hold a password: not echoed
