"""Provider rate limits shared by every worker process on every machine, kept in Redis
through the ``limits`` library (its moving-window strategy).

A provider limited to R calls a second gets at most R calls in any sliding window of
one second, from all processes together: each call first adds an entry to the
provider's window in the shared store, and only a call whose entry fit goes ahead.
The entries carry each worker's clock, so machines keep their clocks in step (NTP);
with clocks within d seconds of each other, a provider sees at most R calls in any
1 - d seconds.

When the store cannot be reached, nothing fails over to "unlimited": the guard hears
:attr:`Verdict.BACKEND_DOWN` and either holds the provider's sends (they come back
later, see :class:`~notifier.pipeline.guard.Admission`) or, when the operator stated
how many worker processes run in total, falls back to each process's own share. The
store is tried again after ``RETRY_BACKEND_S``, not on every call.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from notifier.logging import get_logger
from notifier.settings import LimitsSettings

log = get_logger(__name__)

# After the store failed, calls treat it as down for this long before trying it again.
RETRY_BACKEND_S = 1.0
# A refused call waits for the window's oldest entry to leave, plus this much, so the
# processes that were refused together do not all come back at the same instant.
_REFUSED_SLACK_S = 0.005


class Verdict(StrEnum):
    ADMITTED = "admitted"
    TOO_LONG = "too-long"  # the window stays full longer than the caller may wait
    BACKEND_DOWN = "backend-down"


def window_for(rate_per_s: float) -> RateLimitItem:
    """The moving window that keeps a provider at or under ``rate_per_s``: whole seconds
    (the library's unit), at least one call per window, never more than the rate."""
    seconds = max(1, math.ceil(1 / rate_per_s - 1e-9))
    calls = max(1, math.floor(rate_per_s * seconds + 1e-9))
    return RateLimitItemPerSecond(calls, seconds)


def _async_url(url: str) -> str:
    return url if url.startswith("async+") else f"async+{url}"


# memory:// stores, one per event loop, shared by every limiter of the process (tests, and
# a demo with several apps in one process).
_MEMORY: dict[asyncio.AbstractEventLoop, Storage] = {}


@dataclass
class _Bound:
    """The store's client and limiter for one event loop (a Redis connection belongs to
    the loop it was made on; the adapters' runtime may be restarted with a new loop)."""

    loop: asyncio.AbstractEventLoop
    limiter: MovingWindowRateLimiter


class SharedRateLimit:
    """Admits calls of rate-limited providers against one limit per provider, kept in the
    store at ``settings.storage_url``."""

    def __init__(
        self,
        settings: LimitsSettings,
        rates: dict[str, float],
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.storage_url is None:
            raise ValueError("a shared rate limit needs NOTIFIER_LIMITS__STORAGE_URL")
        self.settings = settings
        self.windows = {name: window_for(rate) for name, rate in rates.items()}
        self._wall_clock = wall_clock
        self._clock = clock
        self._bound: _Bound | None = None
        self._down_until = -math.inf
        self._lock = threading.Lock()

    def limits(self, provider: str) -> bool:
        return provider in self.windows

    def _storage(self) -> Storage:
        url = _async_url(self.settings.storage_url or "")
        if url.startswith("async+memory"):
            loop = asyncio.get_running_loop()
            for old in [other for other in _MEMORY if other.is_closed()]:
                del _MEMORY[old]
            if loop not in _MEMORY:
                _MEMORY[loop] = cast(Storage, storage_from_string(url))
            return _MEMORY[loop]
        timeout = self.settings.timeout_s
        store = storage_from_string(
            url,
            implementation="redispy",
            key_prefix=self.settings.key_prefix,
            wrap_exceptions=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return cast(Storage, store)

    def _limiter(self) -> MovingWindowRateLimiter:
        loop = asyncio.get_running_loop()
        bound = self._bound
        if bound is None or bound.loop is not loop:
            bound = self._bound = _Bound(loop, MovingWindowRateLimiter(self._storage()))
        return bound.limiter

    def backend_down(self) -> bool:
        with self._lock:
            return self._clock() < self._down_until

    def _mark_down(self, error: BaseException) -> None:
        with self._lock:
            was_up = self._clock() >= self._down_until
            self._down_until = self._clock() + RETRY_BACKEND_S
        if was_up:
            # The URL may hold a password: name the error's type and text only.
            log.warning(
                "shared rate limit store unreachable; rate-limited sends fall back",
                error=type(error).__name__,
                fallback_processes=self.settings.fallback_processes,
            )

    async def acquire(self, provider: str, max_wait_s: float) -> Verdict:
        """Take one call of ``provider``'s shared window, waiting at most ``max_wait_s``
        for room (on the adapters' event loop)."""
        window = self.windows[provider]
        if self.backend_down():
            return Verdict.BACKEND_DOWN
        waited = 0.0
        while True:
            try:
                limiter = self._limiter()
                if await limiter.hit(window, provider):
                    return Verdict.ADMITTED
                stats = await limiter.get_window_stats(window, provider)
            except Exception as exc:  # any store failure: fail safe, never crash the send
                self._mark_down(exc)
                return Verdict.BACKEND_DOWN
            wait = max(0.0, stats.reset_time - self._wall_clock()) + _REFUSED_SLACK_S
            if waited + wait > max_wait_s:
                return Verdict.TOO_LONG
            await asyncio.sleep(wait)
            waited += wait
