"""Sign-in throttling slows guessing per (name, address) and never locks an operator out
from elsewhere; a controlled clock, no sleeps."""

from __future__ import annotations

from notifier.web.console.auth import SignInThrottle

ATTACKER, OPERATOR = "203.0.113.7", "198.51.100.20"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_grows_with_each_failure_after_the_free_ones() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    waits = []
    for _ in range(8):
        throttle.failed("lan.admin", ATTACKER)
        waits.append(throttle.retry_after("lan.admin", ATTACKER))
    assert waits == [0, 0, 0, 1, 2, 4, 8, 16]
    clock.now += 15.9
    assert throttle.blocked("lan.admin", ATTACKER)
    clock.now += 0.1
    assert not throttle.blocked("lan.admin", ATTACKER)


def test_the_wait_stops_growing_at_the_cap() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock=clock, max_delay_s=60)
    for _ in range(40):
        throttle.failed("lan.admin", ATTACKER)
    assert throttle.retry_after("lan.admin", ATTACKER) == 60


def test_five_wrong_passwords_for_a_name_leave_its_operator_free_elsewhere() -> None:
    # The reported case: five failures for a name made even the right password, from
    # anywhere, get 429.
    throttle = SignInThrottle(clock=Clock())
    for _ in range(5):
        throttle.failed("lan.admin", ATTACKER)
    assert throttle.blocked("lan.admin", ATTACKER)
    assert not throttle.blocked("lan.admin", OPERATOR)


def test_twenty_failures_from_one_address_lock_no_one_else() -> None:
    # The reported case: 20 failures from one address (every client, behind a proxy
    # without the trusted-proxy setting) locked everyone.
    throttle = SignInThrottle(clock=Clock())
    for i in range(20):
        throttle.failed(f"guess-{i}", ATTACKER)
    assert not throttle.blocked("minh.viewer", ATTACKER)
    assert not throttle.blocked("minh.viewer", OPERATOR)


def test_an_address_spraying_many_names_meets_the_looser_address_limit() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock=clock, per_address=50, window_s=900)
    for i in range(50):
        throttle.failed(f"name-{i}", ATTACKER)
        clock.now += 1
    assert throttle.blocked("someone-new", ATTACKER)
    assert not throttle.blocked("someone-new", OPERATOR)
    clock.now += 900 - 50 + 1  # the first failure left the window
    assert not throttle.blocked("someone-new", ATTACKER)


def test_a_success_or_an_hour_of_quiet_clears_the_pair() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    for _ in range(4):
        throttle.failed("lan.admin", OPERATOR)
    clock.now += 1
    throttle.succeeded("lan.admin", OPERATOR)
    throttle.failed("lan.admin", OPERATOR)
    assert not throttle.blocked("lan.admin", OPERATOR)  # counting starts again
    for _ in range(6):
        throttle.failed("lan.admin", ATTACKER)
    clock.now += 3600
    throttle.failed("lan.admin", ATTACKER)
    assert not throttle.blocked("lan.admin", ATTACKER)  # forgotten, then one failure
