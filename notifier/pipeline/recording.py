"""Recording: what each delivery's try came to becomes an attempt record (sent,
delivered, retried, failed for good, held) written in one transaction per group, waiting
out a short database outage."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy.exc import DBAPIError

from notifier.adapter import (
    DeliveryFailure,
    SendResult,
    TemporaryFailure,
    UncertainSendPolicy,
)
from notifier.costs import PriceTable
from notifier.logging import get_logger
from notifier.plugins.registry import Registry
from notifier.settings import WorkerSettings
from notifier.store.deliveries.lifecycle import (
    AttemptRecord,
    ClaimedDelivery,
    DeliveryStatus,
    DeliveryStore,
)
from notifier.store.schema import utcnow

log = get_logger(__name__)


@dataclass(frozen=True)
class SendOutcome:
    delivery_id: UUID
    status: DeliveryStatus | None  # None: nothing done (finished elsewhere or missing)
    retry_in_ms: int | None = None  # set when the caller should enqueue it again later


# What trying one delivery's providers came to, before it is recorded.
@dataclass(frozen=True)
class Accepted:
    provider: str
    result: SendResult
    started_at: datetime


@dataclass(frozen=True)
class Failed:
    failure: DeliveryFailure
    provider: str | None
    started_at: datetime


@dataclass(frozen=True)
class Held:
    """The last call's outcome is unknown and its provider does not drop repeats."""

    provider: str
    reason: str
    started_at: datetime


@dataclass(frozen=True)
class Deferred:
    """No provider was called (circuits open, rate limit full): give the claim back."""

    reason: str
    retry_in_ms: int


Tried = Accepted | Failed | Deferred | Held


def backoff_ms(worker: WorkerSettings, attempt: int, retry_after_s: float | None = None) -> int:
    """Exponential backoff with jitter, at least what the provider asked for."""
    ceiling = min(worker.max_backoff_ms, worker.min_backoff_ms * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s * 1000)
    return int(min(delay, worker.max_backoff_ms))


class Recorder:
    """Turns finished tries into attempt records and writes them."""

    def __init__(
        self,
        *,
        store: DeliveryStore,
        registry: Registry,
        worker: WorkerSettings,
        policies: Mapping[str, UncertainSendPolicy],
        prices: PriceTable | None = None,
    ) -> None:
        self.store = store
        # Each accepted send's estimated cost is recorded with it (notifier.costs).
        self.prices = prices or PriceTable({})
        self.registry = registry
        self.worker = worker
        # Per provider, what to do when a call's outcome is unknown (the Sender's).
        self.policies = policies

    def record(self, concluded: Sequence[tuple[ClaimedDelivery, Tried]]) -> list[SendOutcome]:
        """Record finished tries in one transaction; the outcome of each."""
        records: list[AttemptRecord] = []
        released: list[ClaimedDelivery] = []
        outcomes: list[SendOutcome] = []
        reason = ""
        for claimed, tried in concluded:
            if isinstance(tried, Held):
                log.warning(
                    "delivery held: outcome unknown",
                    delivery_id=str(claimed.delivery_id),
                    channel=claimed.channel,
                    provider=tried.provider,
                )
                records.append(
                    AttemptRecord(
                        claimed,
                        DeliveryStatus.UNKNOWN,
                        tried.provider,
                        tried.started_at,
                        error=tried.reason,
                        keep_mark=True,
                    )
                )
                outcomes.append(SendOutcome(claimed.delivery_id, DeliveryStatus.UNKNOWN))
                continue
            if isinstance(tried, Deferred):
                released.append(claimed)
                reason = tried.reason
                outcomes.append(
                    SendOutcome(claimed.delivery_id, DeliveryStatus.QUEUED, tried.retry_in_ms)
                )
                continue
            record, outcome = (
                self._accepted(claimed, tried)
                if isinstance(tried, Accepted)
                else self._failed(claimed, tried)
            )
            records.append(record)
            outcomes.append(outcome)
        self._write(lambda: self.store.finish_attempts(records))
        self._write(lambda: self.store.release(released, reason))
        return outcomes

    def _accepted(
        self, claimed: ClaimedDelivery, tried: Accepted
    ) -> tuple[AttemptRecord, SendOutcome]:
        status = DeliveryStatus.DELIVERED if tried.result.delivered else DeliveryStatus.SENT
        log.debug(
            "delivery sent",
            delivery_id=str(claimed.delivery_id),
            channel=claimed.channel,
            provider=tried.provider,
            attempt=claimed.attempt,
        )
        record = AttemptRecord(
            claimed,
            status,
            tried.provider,
            tried.started_at,
            provider_message_id=tried.result.provider_message_id,
            details=dict(tried.result.details) or None,
            charge=self.prices.estimate(tried.provider, tried.result.details),
        )
        return record, SendOutcome(claimed.delivery_id, status)

    def _failed(self, claimed: ClaimedDelivery, tried: Failed) -> tuple[AttemptRecord, SendOutcome]:
        failure = tried.failure
        exhausted = claimed.attempt >= self.worker.max_attempts
        # A provider that names a time beyond our longest backoff (quiet hours) is not
        # failing: that wait does not use up attempts, only the delivery's max age.
        scheduled = (
            isinstance(failure, TemporaryFailure)
            and failure.retry_after_s is not None
            and failure.retry_after_s * 1000 > self.worker.max_backoff_ms
        )
        maybe_sent = isinstance(failure, TemporaryFailure) and failure.maybe_sent
        if maybe_sent and tried.provider is not None and self._holds(claimed, tried.provider):
            log.warning(
                "delivery held: the provider may have it",
                delivery_id=str(claimed.delivery_id),
                channel=claimed.channel,
                provider=tried.provider,
            )
            record = AttemptRecord(
                claimed,
                DeliveryStatus.UNKNOWN,
                tried.provider,
                tried.started_at,
                error=f"may have been sent; held for an admin: {failure.reason}",
                error_code=failure.code,
                keep_mark=True,
            )
            return record, SendOutcome(claimed.delivery_id, DeliveryStatus.UNKNOWN)
        if isinstance(failure, TemporaryFailure) and (scheduled or not exhausted):
            record = AttemptRecord(
                claimed,
                DeliveryStatus.TEMPORARY_FAILURE,
                tried.provider,
                tried.started_at,
                error=failure.reason,
                error_code=failure.code,
                counted=not scheduled,
                # The next claim applies the provider's policy (resend, verify).
                keep_mark=maybe_sent,
            )
            retry_in_ms = backoff_ms(self.worker, claimed.attempt, failure.retry_after_s)
            return record, SendOutcome(
                claimed.delivery_id, DeliveryStatus.TEMPORARY_FAILURE, retry_in_ms
            )
        reason = failure.reason
        if isinstance(failure, TemporaryFailure):
            reason = f"gave up after {claimed.attempt} attempts: {failure.reason}"
        log.warning(
            "delivery failed permanently",
            delivery_id=str(claimed.delivery_id),
            channel=claimed.channel,
            error=reason,
            code=failure.code,
        )
        record = AttemptRecord(
            claimed,
            DeliveryStatus.PERMANENT_FAILURE,
            tried.provider,
            tried.started_at,
            error=reason,
            error_code=failure.code,
            exhausted=isinstance(failure, TemporaryFailure),
            keep_mark=maybe_sent,
        )
        return record, SendOutcome(claimed.delivery_id, DeliveryStatus.PERMANENT_FAILURE)

    def _holds(self, claimed: ClaimedDelivery, provider_name: str) -> bool:
        """Whether a send to this provider that may have gone through is held rather
        than retried: its policy is hold, or resend past its dedupe window."""
        policy = self.policies.get(provider_name, UncertainSendPolicy.HOLD)
        if policy is UncertainSendPolicy.HOLD:
            return True
        if policy is UncertainSendPolicy.RESEND:
            try:
                provider = self.registry.provider(claimed.channel, provider_name)
            except KeyError:
                return True
            window = provider.adapter_class.dedupe_window_s
            age = (utcnow() - claimed.created_at).total_seconds()
            return window is not None and age > window
        return False

    def _write(self, write: Callable[[], None]) -> None:
        """Write, waiting out a short database outage: after a provider has accepted a
        message, giving up here would let the lease expire and send it again."""
        deadline = time.monotonic() + self.worker.send_timeout_s
        delay = 0.2
        while True:
            try:
                write()
                return
            except DBAPIError:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable while recording sends; retrying", retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
