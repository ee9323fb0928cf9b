"""The per-provider token bucket: saved-up tokens never outnumber free call slots."""

from __future__ import annotations

import time

from notifier.protection import TokenBucket


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
