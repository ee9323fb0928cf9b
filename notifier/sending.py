"""Send one delivery: claim it, try the channel's providers in order, record the outcome."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from sqlalchemy.exc import DBAPIError

from notifier.adapter import (
    DeliveryFailure,
    OutboundMessage,
    PermanentFailure,
    SendResult,
    TemporaryFailure,
)
from notifier.deliveries import ClaimedDelivery, ClaimOutcome, DeliveryStatus, DeliveryStore
from notifier.logging import get_logger

if TYPE_CHECKING:
    from notifier.protection import ProviderGuard
from notifier.registry import Registry
from notifier.runtime import AdapterRuntime
from notifier.settings import WorkerSettings
from notifier.store.schema import utcnow

log = get_logger(__name__)


@dataclass(frozen=True)
class ProviderCall:
    """One call of one provider, as reported to observers (metrics, health)."""

    channel: str
    provider: str
    outcome: str  # "sent" | "delivered" | "temporary-failure" | "permanent-failure"
    seconds: float
    error_code: str | None = None
    operator_alert: bool = False
    details: Mapping[str, Any] | None = None  # what the provider said, e.g. quota left


SendObserver = Callable[[ProviderCall], None]


@dataclass(frozen=True)
class SendOutcome:
    status: DeliveryStatus | None  # None: nothing done (finished elsewhere or missing)
    retry_in_ms: int | None = None  # set when the caller should retry later


class Sender:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        registry: Registry,
        runtime: AdapterRuntime,
        worker: WorkerSettings,
    ) -> None:
        self.store = store
        self.registry = registry
        self.runtime = runtime
        self.worker = worker
        # A lease outlives the longest send (sends are cut at send_timeout_s), so a live
        # sender is never overtaken.
        self.lease = timedelta(seconds=worker.send_timeout_s + 10)
        # Called after every provider call; an observer must be quick and must not raise.
        self.observers: list[SendObserver] = []
        self.guard: ProviderGuard | None = None

    def _observe(self, call: ProviderCall) -> None:
        for observer in self.observers:
            try:
                observer(call)
            except Exception:  # an observer's bug never fails a delivery
                log.exception("send observer failed")

    def send(self, delivery_id: UUID) -> SendOutcome:
        outcome, claimed = self.store.claim(delivery_id, self.lease)
        if outcome is ClaimOutcome.BUSY:
            # Another copy is in flight, or its worker died and the lease must run out:
            # look again soon (a look is one UPDATE), at most when the lease would expire.
            return SendOutcome(None, retry_in_ms=random.randint(500, 2000))
        if claimed is None:
            log.info("delivery needs nothing", delivery_id=str(delivery_id), claim=outcome.value)
            return SendOutcome(None)
        with structlog.contextvars.bound_contextvars(
            delivery_id=str(delivery_id),
            event_id=str(claimed.event_id),
            dossier_code=claimed.dossier_code,
            channel=claimed.channel,
        ):
            return self._send_claimed(claimed)

    def _send_claimed(self, claimed: ClaimedDelivery) -> SendOutcome:
        age = (utcnow() - claimed.created_at).total_seconds()
        if age > self.worker.max_age_s:
            return self._finish_failed(
                claimed,
                PermanentFailure(f"expired: not sent within {self.worker.max_age_s:g}s"),
                provider=None,
            )
        message = OutboundMessage(
            delivery_id=claimed.delivery_id,
            event_id=claimed.event_id,
            channel=claimed.channel,
            recipient=claimed.recipient,
            language=claimed.language,
            parts=claimed.content,
            dossier_code=claimed.dossier_code,
            agency_code=claimed.agency_code,
            status=claimed.event_status,
        )
        failure: DeliveryFailure | None = None
        provider_name: str | None = None
        started_at = utcnow()
        for provider in self.registry.providers(claimed.channel):
            if self.guard is not None and not self.guard.admit(provider.name):
                continue  # its circuit is open: the next provider, if any
            provider_name = provider.name
            if self.guard is not None:
                time.sleep(self.guard.wait_for_rate(provider.name))
            adapter = self.runtime.adapter(provider)
            clock = time.perf_counter()
            try:
                result: SendResult = self.runtime.run(
                    adapter.send(message), timeout=self.worker.send_timeout_s
                )
            except TimeoutError:
                failure = TemporaryFailure(
                    f"no answer within {self.worker.send_timeout_s:g}s", maybe_sent=True
                )
            except DeliveryFailure as exc:
                failure = exc
            else:
                status = DeliveryStatus.DELIVERED if result.delivered else DeliveryStatus.SENT
                self._observe(
                    ProviderCall(
                        claimed.channel,
                        provider.name,
                        status.value,
                        time.perf_counter() - clock,
                        details=result.details,
                    )
                )
                self._record(
                    claimed,
                    status=status,
                    provider=provider.name,
                    started_at=started_at,
                    provider_message_id=result.provider_message_id,
                    details=dict(result.details) or None,
                )
                log.info("delivery sent", provider=provider.name, attempt=claimed.attempt)
                return SendOutcome(status)
            self._observe(
                ProviderCall(
                    claimed.channel,
                    provider.name,
                    "permanent-failure"
                    if isinstance(failure, PermanentFailure)
                    else "temporary-failure",
                    time.perf_counter() - clock,
                    failure.code,
                    isinstance(failure, PermanentFailure) and failure.operator_alert,
                )
            )
            log.warning(
                "provider failed",
                provider=provider.name,
                error=failure.reason,
                code=failure.code,
                kind=type(failure).__name__,
            )
            # The recipient's own problem ends the delivery; a provider's problem
            # (outage, our credentials or balance there) moves on to the next provider.
            if isinstance(failure, PermanentFailure) and not failure.operator_alert:
                break
            # The provider may have the message: another provider would send it twice.
            if isinstance(failure, TemporaryFailure) and failure.maybe_sent:
                break
            started_at = utcnow()
        if failure is None:
            # Every provider's circuit is open: nothing was tried, so no attempt is
            # counted; look again when a circuit lets a trial call through.
            self.store.release(claimed, "every provider of the channel is paused (circuit open)")
            return SendOutcome(DeliveryStatus.QUEUED, retry_in_ms=self.backoff_ms(1))
        return self._finish_failed(claimed, failure, provider_name)

    def _finish_failed(
        self, claimed: ClaimedDelivery, failure: DeliveryFailure, provider: str | None
    ) -> SendOutcome:
        exhausted = claimed.attempt >= self.worker.max_attempts
        # A provider that names a time beyond our longest backoff (quiet hours) is not
        # failing: that wait does not use up attempts, only the delivery's max age.
        scheduled = (
            isinstance(failure, TemporaryFailure)
            and failure.retry_after_s is not None
            and failure.retry_after_s * 1000 > self.worker.max_backoff_ms
        )
        if isinstance(failure, TemporaryFailure) and (scheduled or not exhausted):
            self._record(
                claimed,
                status=DeliveryStatus.TEMPORARY_FAILURE,
                provider=provider,
                started_at=utcnow(),
                error=failure.reason,
                error_code=failure.code,
                counted=not scheduled,
            )
            return SendOutcome(
                DeliveryStatus.TEMPORARY_FAILURE,
                retry_in_ms=self.backoff_ms(claimed.attempt, failure.retry_after_s),
            )
        reason = failure.reason
        if isinstance(failure, TemporaryFailure):
            reason = f"gave up after {claimed.attempt} attempts: {failure.reason}"
        self._record(
            claimed,
            status=DeliveryStatus.PERMANENT_FAILURE,
            provider=provider,
            started_at=utcnow(),
            error=reason,
            error_code=failure.code,
        )
        log.warning("delivery failed permanently", error=reason, code=failure.code)
        return SendOutcome(DeliveryStatus.PERMANENT_FAILURE)

    def _record(self, claimed: ClaimedDelivery, **outcome: Any) -> None:
        """Record an attempt, waiting out a short database outage: after a provider has
        accepted a message, giving up here would let the lease expire and send it again."""
        deadline = time.monotonic() + self.worker.send_timeout_s
        delay = 0.2
        while True:
            try:
                self.store.finish_attempt(claimed, **outcome)
                return
            except DBAPIError:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable while recording a send; retrying", retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def backoff_ms(self, attempt: int, retry_after_s: float | None = None) -> int:
        """Exponential backoff with jitter, at least what the provider asked for."""
        ceiling = min(self.worker.max_backoff_ms, self.worker.min_backoff_ms * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s * 1000)
        return int(min(delay, self.worker.max_backoff_ms))
