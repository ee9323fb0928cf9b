"""Send a group of deliveries: claim them, try each one's providers, record the outcomes.

A group (one channel message) is claimed in one statement. Its sends run concurrently
on the adapters' event loop, bounded by each adapter's own pool, and outcomes are
recorded in small groups as they finish, so a crash leaves only the sends still in
flight unrecorded (their lease runs out and they are tried again).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
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
from notifier.deliveries import (
    AttemptRecord,
    ClaimedDelivery,
    ClaimOutcome,
    DeliveryStatus,
    DeliveryStore,
)
from notifier.logging import get_logger

if TYPE_CHECKING:
    from notifier.protection import ProviderGuard
from notifier.registry import Provider, Registry
from notifier.runtime import AdapterRuntime
from notifier.settings import WorkerSettings
from notifier.store.schema import utcnow

log = get_logger(__name__)

# A send waits at most this long for its provider's rate limit; a longer wait gives the
# claim back and comes again later, so a lease never runs out in a rate-limit queue.
MAX_RATE_WAIT_S = 5.0
# After a send finishes, how long others may join it in one recording transaction. A
# crash repeats only the sends in flight or finished within this window.
RECORD_WINDOW_S = 0.02


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
    delivery_id: UUID
    status: DeliveryStatus | None  # None: nothing done (finished elsewhere or missing)
    retry_in_ms: int | None = None  # set when the caller should enqueue it again later


# What trying one delivery's providers came to, before it is recorded.
@dataclass(frozen=True)
class _Accepted:
    provider: str
    result: SendResult
    started_at: datetime


@dataclass(frozen=True)
class _Failed:
    failure: DeliveryFailure
    provider: str | None
    started_at: datetime


@dataclass(frozen=True)
class _Deferred:
    """No provider was called (circuits open, rate limit full): give the claim back."""

    reason: str
    retry_in_ms: int


_Tried = _Accepted | _Failed | _Deferred


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
        # A lease outlives the longest try of every provider of a channel (each send is
        # cut at send_timeout_s, each rate wait at MAX_RATE_WAIT_S), so a live sender
        # is never overtaken.
        most_providers = max((len(p) for p in registry.channels.values()), default=1)
        self.lease = timedelta(
            seconds=most_providers * (worker.send_timeout_s + MAX_RATE_WAIT_S) + 10
        )
        # Called after every provider call, on the event loop; quick, and must not raise.
        self.observers: list[SendObserver] = []
        self.guard: ProviderGuard | None = None

    def _observe(self, call: ProviderCall) -> None:
        for observer in self.observers:
            try:
                observer(call)
            except Exception:  # an observer's bug never fails a delivery
                log.exception("send observer failed")

    def send(self, delivery_ids: Sequence[UUID]) -> list[SendOutcome]:
        """Send what can be claimed of these deliveries; one outcome per id."""
        clock = time.perf_counter()
        claims = self.store.claim(delivery_ids, self.lease)
        outcomes: list[SendOutcome] = []
        for delivery_id, why in claims.not_claimed.items():
            if why is ClaimOutcome.BUSY:
                # Another copy is in flight, or its worker died and the lease must run
                # out: look again soon (a look is one UPDATE).
                outcomes.append(SendOutcome(delivery_id, None, random.randint(500, 2000)))
            else:
                log.debug("delivery needs nothing", delivery_id=str(delivery_id), claim=why)
                outcomes.append(SendOutcome(delivery_id, None))
        now = utcnow()
        concluded: list[tuple[ClaimedDelivery, _Tried]] = []
        pending: dict[Future[_Tried], ClaimedDelivery] = {}
        for claimed in claims.claimed:
            if (now - claimed.created_at).total_seconds() > self.worker.max_age_s:
                expired = PermanentFailure(f"expired: not sent within {self.worker.max_age_s:g}s")
                concluded.append((claimed, _Failed(expired, None, now)))
            else:
                pending[self.runtime.submit(self._try_providers(claimed))] = claimed
        # Nothing here can outwait the lease; past it, another worker may send.
        deadline = time.monotonic() + self.lease.total_seconds() - 5
        while concluded or pending:
            if pending:
                done, _ = wait(
                    pending,
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=FIRST_COMPLETED,
                )
                if not done:
                    done = set(pending)
                    for future in done:
                        future.cancel()
                elif len(done) < len(pending):
                    window = min(RECORD_WINDOW_S, max(0.0, deadline - time.monotonic()))
                    done, _ = wait(pending, timeout=window)
                for future in done:
                    concluded.append((pending.pop(future), _result(future, self.worker)))
            outcomes.extend(self._record(concluded))
            concluded = []
        counts = Counter(o.status.value if o.status else "nothing-to-do" for o in outcomes)
        log.info(
            "deliveries done",
            group=len(outcomes),
            seconds=round(time.perf_counter() - clock, 3),
            **{k.replace("-", "_"): v for k, v in counts.items()},
        )
        return outcomes

    async def _try_providers(self, claimed: ClaimedDelivery) -> _Tried:
        """The channel's providers in order until one accepts (runs on the event loop)."""
        with structlog.contextvars.bound_contextvars(
            delivery_id=str(claimed.delivery_id),
            event_id=str(claimed.event_id),
            dossier_code=claimed.dossier_code,
            channel=claimed.channel,
        ):
            message = claimed.message()
            failure: DeliveryFailure | None = None
            provider_name: str | None = None
            started_at = utcnow()
            for provider in self.registry.providers(claimed.channel):
                answer = await self._call(provider, message)
                if answer is None:
                    continue  # its circuit is open: the next provider, if any
                if isinstance(answer, _Deferred):
                    return answer
                provider_name = provider.name
                if isinstance(answer, SendResult):
                    return _Accepted(provider.name, answer, started_at)
                failure = answer
                log.warning(
                    "provider failed",
                    provider=provider.name,
                    error=failure.reason,
                    code=failure.code,
                    kind=type(failure).__name__,
                )
                # The recipient's own problem ends the delivery; a provider's problem
                # (outage, our credentials or balance there) moves on to the next one.
                if isinstance(failure, PermanentFailure) and not failure.operator_alert:
                    break
                # The provider may have the message: another provider would send it twice.
                if isinstance(failure, TemporaryFailure) and failure.maybe_sent:
                    break
                started_at = utcnow()
            if failure is None:
                # Every provider's circuit is open: nothing was tried, so no attempt is
                # counted; look again when a circuit lets a trial call through.
                return _Deferred(
                    "every provider of the channel is paused (circuit open)", self.backoff_ms(1)
                )
            return _Failed(failure, provider_name, started_at)

    async def _call(
        self, provider: Provider, message: OutboundMessage
    ) -> SendResult | DeliveryFailure | _Deferred | None:
        """One call of one provider, within its rate limit and circuit breaker; None when
        its circuit is open."""
        guard = self.guard
        async with (
            self.runtime.slot(provider),
            guard.slot(provider.name) if guard else contextlib.nullcontext(),
        ):
            rate_wait = 0.0 if guard is None else guard.reserve(provider.name, MAX_RATE_WAIT_S)
            if rate_wait is None:
                return _Deferred(f"rate limit of {provider.name} reached", self.backoff_ms(1))
            try:
                if guard is not None:
                    if not guard.admit(provider.name):
                        return None
                    await asyncio.sleep(rate_wait)
                clock = time.perf_counter()
                answer = await self._send(provider, message)
            finally:
                if guard is not None:
                    guard.finish(provider.name)
        seconds = time.perf_counter() - clock
        if isinstance(answer, SendResult):
            outcome = "delivered" if answer.delivered else "sent"
            call = ProviderCall(
                message.channel, provider.name, outcome, seconds, details=answer.details
            )
        else:
            permanent = isinstance(answer, PermanentFailure)
            call = ProviderCall(
                message.channel,
                provider.name,
                "permanent-failure" if permanent else "temporary-failure",
                seconds,
                answer.code,
                isinstance(answer, PermanentFailure) and answer.operator_alert,
            )
        self._observe(call)
        return answer

    async def _send(
        self, provider: Provider, message: OutboundMessage
    ) -> SendResult | DeliveryFailure:
        adapter = self.runtime.adapter(provider)
        try:
            return await asyncio.wait_for(adapter.send(message), self.worker.send_timeout_s)
        except TimeoutError:
            return TemporaryFailure(
                f"no answer within {self.worker.send_timeout_s:g}s", maybe_sent=True
            )
        except DeliveryFailure as exc:
            return exc
        except Exception as exc:  # an adapter's bug: it may have sent
            log.exception("adapter raised an unexpected error", provider=provider.name)
            return TemporaryFailure(f"adapter error: {exc!r}", maybe_sent=True)

    def _record(self, concluded: Sequence[tuple[ClaimedDelivery, _Tried]]) -> list[SendOutcome]:
        """Record finished tries in one transaction; the outcome of each."""
        records: list[AttemptRecord] = []
        released: list[ClaimedDelivery] = []
        outcomes: list[SendOutcome] = []
        reason = ""
        for claimed, tried in concluded:
            if isinstance(tried, _Deferred):
                released.append(claimed)
                reason = tried.reason
                outcomes.append(
                    SendOutcome(claimed.delivery_id, DeliveryStatus.QUEUED, tried.retry_in_ms)
                )
                continue
            record, outcome = (
                self._accepted(claimed, tried)
                if isinstance(tried, _Accepted)
                else self._failed(claimed, tried)
            )
            records.append(record)
            outcomes.append(outcome)
        self._write(lambda: self.store.finish_attempts(records))
        self._write(lambda: self.store.release(released, reason))
        return outcomes

    def _accepted(
        self, claimed: ClaimedDelivery, tried: _Accepted
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
        )
        return record, SendOutcome(claimed.delivery_id, status)

    def _failed(
        self, claimed: ClaimedDelivery, tried: _Failed
    ) -> tuple[AttemptRecord, SendOutcome]:
        failure = tried.failure
        exhausted = claimed.attempt >= self.worker.max_attempts
        # A provider that names a time beyond our longest backoff (quiet hours) is not
        # failing: that wait does not use up attempts, only the delivery's max age.
        scheduled = (
            isinstance(failure, TemporaryFailure)
            and failure.retry_after_s is not None
            and failure.retry_after_s * 1000 > self.worker.max_backoff_ms
        )
        if isinstance(failure, TemporaryFailure) and (scheduled or not exhausted):
            record = AttemptRecord(
                claimed,
                DeliveryStatus.TEMPORARY_FAILURE,
                tried.provider,
                tried.started_at,
                error=failure.reason,
                error_code=failure.code,
                counted=not scheduled,
            )
            retry_in_ms = self.backoff_ms(claimed.attempt, failure.retry_after_s)
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
        )
        return record, SendOutcome(claimed.delivery_id, DeliveryStatus.PERMANENT_FAILURE)

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

    def backoff_ms(self, attempt: int, retry_after_s: float | None = None) -> int:
        """Exponential backoff with jitter, at least what the provider asked for."""
        ceiling = min(self.worker.max_backoff_ms, self.worker.min_backoff_ms * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s * 1000)
        return int(min(delay, self.worker.max_backoff_ms))


def _result(future: Future[_Tried], worker: WorkerSettings) -> _Tried:
    """A finished (or abandoned) try; one that never answered may have sent."""
    if future.cancelled():
        return _Failed(
            TemporaryFailure(f"no answer within {worker.send_timeout_s:g}s", maybe_sent=True),
            None,
            utcnow(),
        )
    try:
        return future.result()
    except Exception as exc:  # a bug before any provider call (adapter calls are caught)
        log.error("sending failed before a provider call", error=repr(exc), exc_info=exc)
        return _Failed(TemporaryFailure(f"internal error: {exc!r}"), None, utcnow())
