"""Provider protection: a rate limit and a circuit breaker per provider, per process.

The rate limit keeps a burst within the provider's own limit (a ban costs more than a
delay). The circuit breaker stops calling a provider that keeps failing, so the
channel fails over to its next provider at once, and lets one trial call through
after a pause.

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
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from notifier.logging import get_logger
from notifier.pipeline.sending import ProviderCall
from notifier.settings import ProviderPolicy
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
    """``rate`` tokens a second, at most ``burst`` saved up. Thread-safe.

    A call holds its token until :meth:`finish`: tokens saved up never exceed ``burst``
    less the calls in flight, because a call still in flight may not have reached the
    provider yet (its client opening a connection), and would arrive with the next ones.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._in_flight = 0
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self, max_wait: float = float("inf")) -> float | None:
        """Take a token for a call; return how long to wait before making it (0 when
        free now), or None, taking nothing, when that wait would exceed ``max_wait``."""
        with self._lock:
            now = time.monotonic()
            saved = self._tokens + (now - self._updated) * self.rate
            self._tokens = min(self.burst - self._in_flight, saved)
            self._updated = now
            wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
            if wait > max_wait:
                return None
            self._tokens -= 1
            self._in_flight += 1
            return wait

    def finish(self) -> None:
        """The call of a reserved token is over."""
        with self._lock:
            self._in_flight -= 1


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


@dataclass
class _Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False


class ProviderGuard:
    """Rate limits and circuit breakers for every provider of one worker process."""

    def __init__(
        self, database: Database, policies: dict[str, ProviderPolicy], processes: int = 1
    ) -> None:
        self.database = database
        self.policies = policies
        self._buckets = {
            name: TokenBucket(policy.rate_per_s / processes, policy.burst)
            for name, policy in policies.items()
            if policy.rate_per_s is not None
        }
        # A rate-limited provider has at most ``burst`` calls in flight per process, and a
        # call takes its token once it holds a slot: sends held up in the adapter (its
        # pool opening connections) cannot bank tokens and then reach the provider at once.
        self._slot_limits = {
            name: policy.burst for name, policy in policies.items() if policy.rate_per_s is not None
        }
        self._slots: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self._circuits: dict[str, _Circuit] = {}
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

    def admit(self, provider: str) -> bool:
        """May we call this provider now? False while its circuit is open."""
        with self._lock:
            circuit = self._circuits.setdefault(provider, _Circuit())
            if circuit.state is CircuitState.CLOSED:
                return True
            if circuit.state is CircuitState.OPEN and time.monotonic() >= circuit.open_until:
                circuit.state = CircuitState.HALF_OPEN
                circuit.trial_in_flight = False
            if circuit.state is CircuitState.HALF_OPEN and not circuit.trial_in_flight:
                circuit.trial_in_flight = True  # exactly one trial call
                return True
            return False

    def slot(self, provider: str) -> AbstractAsyncContextManager[Any]:
        """Hold while calling the provider (on the adapters' event loop)."""
        limit = self._slot_limits.get(provider)
        if limit is None:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        held = self._slots.get(provider)
        if held is None or held[0] is not loop:  # a restarted runtime has a new loop
            held = self._slots[provider] = (loop, asyncio.Semaphore(limit))
        return held[1]

    def reserve(self, provider: str, max_wait: float) -> float | None:
        """Seconds to wait before calling, under the provider's rate limit; None (nothing
        reserved) when the wait would be longer than ``max_wait``. A reservation is
        ended by :meth:`finish`."""
        bucket = self._buckets.get(provider)
        return 0.0 if bucket is None else bucket.reserve(max_wait)

    def finish(self, provider: str) -> None:
        bucket = self._buckets.get(provider)
        if bucket is not None:
            bucket.finish()

    def state(self, provider: str) -> CircuitState:
        with self._lock:
            return self._circuits.setdefault(provider, _Circuit()).state

    def observe(self, call: ProviderCall) -> None:
        """A Sender observer: count failures that are the provider's, not the recipient's,
        and keep what providers report about themselves (e.g. ZNS daily quota left).
        Runs on the event loop: database writes go to the writer thread."""
        if call.details and any(key.startswith("quota") for key in call.details):
            self._record_quota(call)
        provider_fault = call.outcome == "temporary-failure" or call.operator_alert
        policy = self._policy(call.provider)
        change: tuple[CircuitState, int, str | None] | None = None
        now = time.monotonic()
        with self._lock:
            circuit = self._circuits.setdefault(call.provider, _Circuit())
            if not provider_fault:
                if circuit.state is not CircuitState.CLOSED or circuit.failures:
                    was = circuit.state
                    circuit.state, circuit.failures, circuit.trial_in_flight = (
                        CircuitState.CLOSED,
                        0,
                        False,
                    )
                    if was is not CircuitState.CLOSED:
                        change = (CircuitState.CLOSED, 0, None)
            else:
                circuit.failures += 1
                reopen = circuit.state is CircuitState.HALF_OPEN
                if reopen or circuit.failures >= policy.circuit_failures:
                    circuit.state = CircuitState.OPEN
                    circuit.open_until = now + policy.circuit_open_s
                    circuit.trial_in_flight = False
                    change = (CircuitState.OPEN, circuit.failures, call.error_code)
            outcome = (call.provider, not provider_fault)
            due = now - self._outcome_written.get(outcome, -1e9) >= OUTCOME_WRITE_INTERVAL_S
            if change is not None or due:
                self._outcome_written[outcome] = now
        at = utcnow()
        if change is not None:
            state, failures, code = change
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
        now = time.monotonic()
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
