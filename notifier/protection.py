"""Provider protection: a rate limit and a circuit breaker per provider, per process.

The rate limit keeps a burst within the provider's own limit (a ban costs more than a
delay). The circuit breaker stops calling a provider that keeps failing, so the
channel fails over to its next provider at once, and lets one trial call through
after a pause. State changes are written to ``provider_health`` for operators.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

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
    """``rate`` tokens a second, at most ``burst`` saved up. Thread-safe."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; return how long to wait before using it (0 when free now)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


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

    def wait_for_rate(self, provider: str) -> float:
        """Seconds to wait before calling, under the provider's rate limit."""
        bucket = self._buckets.get(provider)
        return 0.0 if bucket is None else bucket.reserve()

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
