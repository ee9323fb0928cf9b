"""The guard around each provider call, as the Sender sees it: one async context
manager that admits a call (rate limit, circuit breaker) or says why not, and hears
every call's outcome. :class:`NoGuard` admits everything (tests, tools)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from notifier.store.deliveries.lifecycle import DeliveryStatus


class Admission(StrEnum):
    """Whether a provider call may go ahead now."""

    ADMITTED = "admitted"
    RATE_LIMITED = "rate-limited"  # the wait for a token would be too long: come back
    CIRCUIT_OPEN = "circuit-open"  # the provider is paused: try the next one


@dataclass(frozen=True)
class ProviderCall:
    """One call of one provider, as reported to observers (metrics, health)."""

    channel: str
    provider: str
    # SENT, DELIVERED, TEMPORARY_FAILURE or PERMANENT_FAILURE
    outcome: DeliveryStatus
    seconds: float
    error_code: str | None = None
    operator_alert: bool = False
    details: Mapping[str, Any] | None = None  # what the provider said, e.g. quota left

    @property
    def provider_fault(self) -> bool:
        """The provider's problem (outage, our account there), not the recipient's."""
        # == rather than is: callers outside the Sender may pass the plain value.
        return self.outcome == DeliveryStatus.TEMPORARY_FAILURE or self.operator_alert


class Guard(Protocol):
    def call(self, provider: str, max_wait_s: float) -> AbstractAsyncContextManager[Admission]:
        """Held around one call of ``provider`` (on the adapters' event loop): waits for
        its rate limit (at most ``max_wait_s``), then says whether the call may go."""
        ...

    def observe(self, call: ProviderCall) -> None:
        """A call's outcome (on the event loop: quick, must not raise)."""
        ...


class NoGuard:
    """Admits every call at once and keeps nothing."""

    @asynccontextmanager
    async def call(self, provider: str, max_wait_s: float) -> AsyncIterator[Admission]:
        yield Admission.ADMITTED

    def observe(self, call: ProviderCall) -> None:
        pass
