"""Provider protection: a rate limit and a circuit breaker per provider, per process.

The rate limit keeps a burst within the provider's own limit (a ban costs more than a
delay). The circuit breaker stops calling a provider that keeps failing, so the
channel fails over to its next provider at once, and lets one trial call through
after a pause. State changes are written to ``provider_health`` for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from notifier.logging import get_logger
from notifier.sending import ProviderCall
from notifier.settings import ProviderPolicy
from notifier.store import Database
from notifier.store.schema import provider_health, utcnow

log = get_logger(__name__)

# Quota figures change with every send; the database hears of them this often at most.
QUOTA_WRITE_INTERVAL_S = 10.0


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


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


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
        self._lock = threading.Lock()

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
        and keep what providers report about themselves (e.g. ZNS daily quota left)."""
        if call.details and any(key.startswith("quota") for key in call.details):
            self._record_quota(call)
        provider_fault = call.outcome == "temporary-failure" or call.operator_alert
        policy = self._policy(call.provider)
        change: tuple[CircuitState, int, str | None] | None = None
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
                    circuit.open_until = time.monotonic() + policy.circuit_open_s
                    circuit.trial_in_flight = False
                    change = (CircuitState.OPEN, circuit.failures, call.error_code)
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
            self._record(
                call.channel,
                call.provider,
                state,
                failures,
                code,
                policy.circuit_open_s if state is CircuitState.OPEN else None,
            )

    def _record_quota(self, call: ProviderCall) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._quota_written.get(call.provider, -1e9) < QUOTA_WRITE_INTERVAL_S:
                return
            self._quota_written[call.provider] = now
        quota = {k: v for k, v in (call.details or {}).items() if k.startswith("quota")}
        try:
            with self.database.begin() as connection:
                changed = connection.execute(
                    sa.update(provider_health)
                    .where(provider_health.c.provider == call.provider)
                    .values(details=quota, updated_at=utcnow())
                ).rowcount
                if not changed:
                    connection.execute(
                        self.database.insert_ignore(provider_health, "provider").values(
                            provider=call.provider,
                            channel=call.channel,
                            circuit_state=self.state(call.provider).value,
                            consecutive_failures=0,
                            details=quota,
                            updated_at=utcnow(),
                        )
                    )
        except Exception:  # best effort, like circuit states
            log.exception("could not record provider quota", provider=call.provider)

    def _record(
        self,
        channel: str,
        provider: str,
        state: CircuitState,
        failures: int,
        error: str | None,
        open_for_s: float | None,
    ) -> None:
        values = {
            "channel": channel,
            "circuit_state": state.value,
            "consecutive_failures": failures,
            "open_until": utcnow() + timedelta(seconds=open_for_s) if open_for_s else None,
            "last_error": error,
            "updated_at": utcnow(),
        }
        try:
            with self.database.begin() as connection:
                changed = connection.execute(
                    sa.update(provider_health)
                    .where(provider_health.c.provider == provider)
                    .values(**values)
                ).rowcount
                if not changed:
                    connection.execute(
                        self.database.insert_ignore(provider_health, "provider").values(
                            provider=provider, **values
                        )
                    )
        except Exception:  # operators' view is best effort; sending goes on
            log.exception("could not record provider health", provider=provider)
