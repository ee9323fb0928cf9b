"""Provider protection: a rate limit and a circuit breaker per provider.

The rate limit keeps a burst within the provider's own limit (a ban costs more than a
delay). It is per process (``rate / processes``, for one machine) unless a shared store
is set (``NOTIFIER_LIMITS__STORAGE_URL``): then one limit per provider holds for every
process on every machine (:mod:`notifier.pipeline.sharedlimit`).

The circuit breaker stops calling a provider that keeps failing, so the channel fails
over to its next provider at once, and lets one trial call through after a pause. It
stays per process, on purpose: each process learns of an outage from its own calls, so
an outage costs at most ``circuit_failures`` failed calls per process before that
process stops, then one trial call per process per pause. Sharing it would put a store
round trip on every call's outcome, and a store outage would then also decide whether
providers are called.
What operators see is shared already: every process records its circuit's changes and
outcomes in the database (``provider_health``).

Operators see ``provider_health``: each process writes its circuit's changes, and
the latest success and failure it saw (every ``OUTCOME_WRITE_INTERVAL_S`` at most),
with times. The state shown is derived from them
(:func:`notifier.store.health.shown_circuit_state`), so a circuit left "open" by a
worker that was killed reads "closed" once any process has a success after it opened,
and "half-open" once its pause is over. These writes run on a writer thread of their
own, never on the adapters' event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from notifier.logging import get_logger
from notifier.pipeline.guard import Admission, ProviderCall
from notifier.pipeline.sharedlimit import SharedRateLimit, Verdict
from notifier.settings import LimitsSettings, ProviderPolicy
from notifier.store import Database
from notifier.store.health import CircuitState
from notifier.store.schema import provider_health, utcnow

log = get_logger(__name__)

# Quota figures change with every send; the database hears of them this often at most.
QUOTA_WRITE_INTERVAL_S = 10.0
# Each process writes a provider's latest success (and failure) this often at most: the
# lag before a stale "open" clears, at the cost of one small UPDATE per interval.
OUTCOME_WRITE_INTERVAL_S = 5.0


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. Pure: the caller passes the
    time (seconds on a monotonic clock) and holds any lock.

    A call holds its token until :meth:`finish`: tokens saved up never exceed ``burst``
    less the calls in flight, because a call still in flight may not have reached the
    provider yet (its client opening a connection), and would arrive with the next ones.
    """

    def __init__(self, rate: float, burst: int, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._in_flight = 0
        self._updated = now

    def reserve(self, now: float, max_wait: float = float("inf")) -> float | None:
        """Take a token for a call; return how long to wait before making it (0 when
        free now), or None, taking nothing, when that wait would exceed ``max_wait``."""
        saved = self._tokens + max(0.0, now - self._updated) * self.rate
        self._tokens = min(self.burst - self._in_flight, saved)
        self._updated = max(now, self._updated)
        wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
        if wait > max_wait:
            return None
        self._tokens -= 1
        self._in_flight += 1
        return wait

    def finish(self) -> None:
        """The call of a reserved token is over."""
        self._in_flight -= 1


CircuitChange = tuple[CircuitState, int]  # the new state and the failures counted


class CircuitBreaker:
    """Stops calling a provider after ``failures_to_open`` provider faults in a row;
    after ``open_s`` lets exactly one trial call through, whose outcome closes or
    reopens it. Pure: the caller passes the time and holds any lock."""

    def __init__(self, failures_to_open: int, open_s: float) -> None:
        self.failures_to_open = failures_to_open
        self.open_s = open_s
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.open_until = 0.0
        self._trial_in_flight = False

    def admit(self, now: float) -> bool:
        """May a call go now? False while open (and while a trial call is out)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and now >= self.open_until:
            self.state = CircuitState.HALF_OPEN
            self._trial_in_flight = False
        if self.state is CircuitState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True  # exactly one trial call
            return True
        return False

    def record(self, provider_fault: bool, now: float) -> CircuitChange | None:
        """A call's outcome; the change of state it caused, if any."""
        if not provider_fault:
            was = self.state
            self.state, self.failures, self._trial_in_flight = CircuitState.CLOSED, 0, False
            return None if was is CircuitState.CLOSED else (CircuitState.CLOSED, 0)
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.failures_to_open:
            self.state = CircuitState.OPEN
            self.open_until = now + self.open_s
            self._trial_in_flight = False
            return (CircuitState.OPEN, self.failures)
        return None


class _HealthWriter:
    """Runs provider-health writes in order on a thread of its own, so the adapters'
    event loop never waits for the database. Best effort: a full queue drops a write."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(size)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                # First use, or a forked child: the parent's thread did not come along.
                self._queue = queue.Queue(self.size)
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="provider-health", daemon=True
                )
                self._thread.start()
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                log.warning("provider health write dropped: the writer is behind")

    @staticmethod
    def _run(jobs: queue.Queue[Callable[[], None] | None]) -> None:
        while True:
            job = jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception:  # operators' view is best effort; sending goes on
                log.exception("could not record provider health")
            finally:
                jobs.task_done()

    def flush(self) -> None:
        """Wait until every write submitted so far is done."""
        with self._lock:
            jobs = self._queue if self._pid == os.getpid() else None
        if jobs is not None:
            jobs.join()

    def close(self) -> None:
        with self._lock:
            thread, jobs = self._thread, self._queue
            mine = self._pid == os.getpid()
            self._thread = None
        if thread is not None and mine:
            jobs.put(None)
            thread.join(timeout=10)


class ProviderGuard:
    """Rate limits and circuit breakers for every provider of one worker process: the
    Sender's :class:`~notifier.pipeline.guard.Guard`."""

    def __init__(
        self,
        database: Database,
        policies: dict[str, ProviderPolicy],
        processes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        limits: LimitsSettings | None = None,
    ) -> None:
        self.database = database
        self.policies = policies
        self._clock = clock
        rates = {
            name: policy.rate_per_s
            for name, policy in policies.items()
            if policy.rate_per_s is not None
        }
        self._shared: SharedRateLimit | None = None
        if limits is not None and limits.storage_url is not None:
            self._shared = SharedRateLimit(limits, rates, clock=clock)
            # While the shared store is down: each process's stated share of the rate and
            # of the burst (so all of them together stay within both), or no calls at all.
            share = limits.fallback_processes
            self._buckets = (
                {}
                if share is None
                else {
                    name: TokenBucket(rate / share, max(1, policies[name].burst // share), clock())
                    for name, rate in rates.items()
                }
            )
        else:
            self._buckets = {
                name: TokenBucket(rate / processes, policies[name].burst, clock())
                for name, rate in rates.items()
            }
        # A rate-limited provider has at most ``burst`` calls in flight per process, and a
        # call takes its token once it holds a slot: sends held up in the adapter (its
        # pool opening connections) cannot bank tokens and then reach the provider at once.
        self._slot_limits = {
            name: policy.burst for name, policy in policies.items() if policy.rate_per_s is not None
        }
        self._slots: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self._circuits: dict[str, CircuitBreaker] = {}
        self._quota_written: dict[str, float] = {}
        self._outcome_written: dict[tuple[str, bool], float] = {}
        self._lock = threading.Lock()
        self._writer = _HealthWriter()

    def flush(self) -> None:
        """Wait for the health writes submitted so far (tests, shutdown)."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _policy(self, provider: str) -> ProviderPolicy:
        return self.policies.get(provider) or ProviderPolicy()

    def _circuit(self, provider: str) -> CircuitBreaker:
        circuit = self._circuits.get(provider)
        if circuit is None:
            policy = self._policy(provider)
            circuit = CircuitBreaker(policy.circuit_failures, policy.circuit_open_s)
            self._circuits[provider] = circuit
        return circuit

    @asynccontextmanager
    async def call(self, provider: str, max_wait_s: float) -> AsyncIterator[Admission]:
        """Held around one call of ``provider``: a call slot (rate-limited providers),
        then a token (waited for here, at most ``max_wait_s``), then the circuit's say."""
        async with self._slot(provider):
            if self._shared is not None and self._shared.limits(provider):
                verdict = await self._shared.acquire(provider, max_wait_s)
                if verdict is Verdict.TOO_LONG or (
                    verdict is Verdict.BACKEND_DOWN and provider not in self._buckets
                ):
                    yield Admission.RATE_LIMITED
                    return
                if verdict is Verdict.ADMITTED:
                    yield Admission.ADMITTED if self.admit(provider) else Admission.CIRCUIT_OPEN
                    return
            # Per-process: this process's own bucket (also the shared store's fallback).
            wait = self._reserve(provider, max_wait_s)
            if wait is None:
                yield Admission.RATE_LIMITED
                return
            try:
                if not self.admit(provider):
                    yield Admission.CIRCUIT_OPEN
                    return
                await asyncio.sleep(wait)
                yield Admission.ADMITTED
            finally:
                self._finish(provider)

    def admit(self, provider: str) -> bool:
        """May we call this provider now? False while its circuit is open."""
        with self._lock:
            return self._circuit(provider).admit(self._clock())

    def _slot(self, provider: str) -> AbstractAsyncContextManager[Any]:
        """Hold while calling the provider (on the adapters' event loop)."""
        limit = self._slot_limits.get(provider)
        if limit is None:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        held = self._slots.get(provider)
        if held is None or held[0] is not loop:  # a restarted runtime has a new loop
            held = self._slots[provider] = (loop, asyncio.Semaphore(limit))
        return held[1]

    def _reserve(self, provider: str, max_wait: float) -> float | None:
        """Seconds to wait before calling, under the provider's rate limit; None (nothing
        reserved) when the wait would be longer than ``max_wait``. A reservation is
        ended by :meth:`_finish`."""
        bucket = self._buckets.get(provider)
        if bucket is None:
            return 0.0
        with self._lock:
            return bucket.reserve(self._clock(), max_wait)

    def _finish(self, provider: str) -> None:
        bucket = self._buckets.get(provider)
        if bucket is not None:
            with self._lock:
                bucket.finish()

    def state(self, provider: str) -> CircuitState:
        with self._lock:
            return self._circuit(provider).state

    def observe(self, call: ProviderCall) -> None:
        """A Sender observer: count failures that are the provider's, not the recipient's,
        and keep what providers report about themselves (e.g. ZNS daily quota left).
        Runs on the event loop: database writes go to the writer thread."""
        if call.details and any(key.startswith("quota") for key in call.details):
            self._record_quota(call)
        provider_fault = call.provider_fault
        policy = self._policy(call.provider)
        now = self._clock()
        with self._lock:
            change = self._circuit(call.provider).record(provider_fault, now)
            outcome = (call.provider, not provider_fault)
            due = now - self._outcome_written.get(outcome, -1e9) >= OUTCOME_WRITE_INTERVAL_S
            if change is not None or due:
                self._outcome_written[outcome] = now
        at = utcnow()
        if change is not None:
            state, failures = change
            code = call.error_code if state is CircuitState.OPEN else None
            if state is CircuitState.OPEN:
                log.warning(
                    "circuit opened: provider failing, calls paused",
                    provider=call.provider,
                    failures=failures,
                    error_code=code,
                    pause_s=policy.circuit_open_s,
                )
            else:
                log.info("circuit closed: provider recovered", provider=call.provider)
            open_for = policy.circuit_open_s if state is CircuitState.OPEN else None
            channel, provider = call.channel, call.provider
            self._writer.submit(
                lambda: self._record(channel, provider, state, failures, code, open_for, at)
            )
        elif due:
            channel, provider, success = call.channel, call.provider, not provider_fault
            self._writer.submit(lambda: self._record_outcome(channel, provider, success, at))

    def _record_quota(self, call: ProviderCall) -> None:
        now = self._clock()
        with self._lock:
            if now - self._quota_written.get(call.provider, -1e9) < QUOTA_WRITE_INTERVAL_S:
                return
            self._quota_written[call.provider] = now
        quota = {k: v for k, v in (call.details or {}).items() if k.startswith("quota")}
        channel, provider = call.channel, call.provider
        self._writer.submit(lambda: self._write_quota(channel, provider, quota))

    def _write_quota(self, channel: str, provider: str, quota: dict[str, Any]) -> None:
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(provider_health)
                .where(provider_health.c.provider == provider)
                .values(details=quota, updated_at=utcnow())
            ).rowcount
            if not changed:
                connection.execute(
                    self.database.insert_ignore(provider_health, "provider").values(
                        provider=provider,
                        channel=channel,
                        circuit_state=self.state(provider).value,
                        consecutive_failures=0,
                        details=quota,
                        updated_at=utcnow(),
                    )
                )

    def _record_outcome(self, channel: str, provider: str, success: bool, at: datetime) -> None:
        """The latest success or failure this process saw (kept if another process has
        written a later one)."""
        h = provider_health.c
        column = h.last_success_at if success else h.last_failure_at
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(provider_health)
                .where(provider_health.c.provider == provider)
                .values({column.name: _latest(column, at)})
            ).rowcount
            if not changed:
                connection.execute(
                    self.database.insert_ignore(provider_health, "provider").values(
                        provider=provider,
                        channel=channel,
                        circuit_state=CircuitState.CLOSED.value,
                        consecutive_failures=0,
                        updated_at=at,
                        **{column.name: at},
                    )
                )

    def _record(
        self,
        channel: str,
        provider: str,
        state: CircuitState,
        failures: int,
        error: str | None,
        open_for_s: float | None,
        at: datetime,
    ) -> None:
        """A change of this process's circuit, with the outcome that caused it."""
        h = provider_health.c
        opened = state is CircuitState.OPEN
        values: dict[str, Any] = {
            "channel": channel,
            "circuit_state": state.value,
            "consecutive_failures": failures,
            "open_until": at + timedelta(seconds=open_for_s) if open_for_s else None,
            "last_error": error,
            "updated_at": at,
        }
        if opened:
            values["opened_at"] = at
        outcome = h.last_failure_at if opened else h.last_success_at
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(provider_health)
                .where(h.provider == provider)
                .values(**values, **{outcome.name: _latest(outcome, at)})
            ).rowcount
            if not changed:
                connection.execute(
                    self.database.insert_ignore(provider_health, "provider").values(
                        provider=provider, **values, **{outcome.name: at}
                    )
                )


def _latest(column: sa.Column[Any], at: datetime) -> sa.ColumnElement[Any]:
    """``column`` set to ``at`` unless it already holds a later time (another process)."""
    newer = sa.literal(at, column.type)
    return sa.case((sa.or_(column.is_(None), column < at), newer), else_=column)
