"""Send a group of deliveries: claim them, try each one's providers, record the outcomes.

A group (one channel message) is claimed in one statement. Its sends run concurrently
on the adapters' event loop, bounded by each adapter's own pool and by the backlog of
unrecorded results (``NOTIFIER_WORKER__MAX_UNRECORDED``), and outcomes are recorded in
small groups as they finish. Each call is preceded by a durable dispatch mark, so after
a crash a claim tells "never called" (send it) from "called, outcome unknown" (apply
the provider's policy: resend, verify, hold).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import structlog

from notifier.adapter import (
    DeliveryFailure,
    LookupAnswer,
    OutboundMessage,
    PermanentFailure,
    SendResult,
    TemporaryFailure,
    UncertainSendPolicy,
    watching_handover,
)
from notifier.costs import PriceTable
from notifier.logging import get_logger
from notifier.pipeline.dispatch import BacklogEntry, DispatchJournal, RecordBacklog
from notifier.pipeline.gate import SendGate
from notifier.pipeline.guard import Admission, Guard, NoGuard, ProviderCall
from notifier.pipeline.recording import (
    Accepted,
    Deferred,
    Failed,
    Held,
    Recorder,
    SendOutcome,
    Tried,
    backoff_ms,
)
from notifier.plugins.registry import Provider, Registry
from notifier.plugins.runtime import AdapterRuntime
from notifier.settings import SettingsError, WorkerSettings
from notifier.store.deliveries.lifecycle import (
    ClaimedDelivery,
    ClaimOutcome,
    DeliveryStatus,
    DeliveryStore,
    DispatchMark,
)
from notifier.store.schema import utcnow

log = get_logger(__name__)

# A send waits at most this long for its provider's rate limit; a longer wait gives the
# claim back and comes again later, so a lease never runs out in a rate-limit queue.
MAX_RATE_WAIT_S = 5.0
# After a send finishes, how long others may join it in one recording transaction
# (not while calls are held back by the backlog: then it records at once).
RECORD_WINDOW_S = 0.02


SendObserver = Callable[[ProviderCall], None]


@dataclass
class _Progress:
    """How far one delivery's try got, as seen from the worker thread (set on the loop)."""

    # The provider whose call was marked as started: a try cut off after this may
    # have reached it.
    marked: str | None = None
    # A result that may mean "sent" is counted in the backlog until recorded.
    entry: BacklogEntry = field(default_factory=BacklogEntry)


class Sender:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        registry: Registry,
        runtime: AdapterRuntime,
        worker: WorkerSettings,
        guard: Guard | None = None,
        uncertain_send: Mapping[str, UncertainSendPolicy] | None = None,
        gate: SendGate | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.store = store
        # The citizen's choice checked again before any call (None: tests without it).
        self.gate = gate
        self.guard: Guard = guard or NoGuard()
        self.registry = registry
        self.runtime = runtime
        self.worker = worker
        # Per provider, what to do when a call's outcome is unknown: the operator's
        # setting, else the adapter's own declaration.
        self.policies: dict[str, UncertainSendPolicy] = {}
        for provider in registry.all_providers():
            policy = (uncertain_send or {}).get(provider.name)
            policy = policy or provider.adapter_class.uncertain_send_policy
            if policy is UncertainSendPolicy.VERIFY and not provider.adapter_class.has_lookup():
                raise SettingsError(
                    [
                        f"NOTIFIER_PROVIDERS__{provider.name.upper()}__UNCERTAIN_SEND: verify "
                        "needs a status lookup, which adapter "
                        f"{provider.adapter_class.name!r} has not"
                    ]
                )
            self.policies[provider.name] = policy
        self.recorder = Recorder(
            store=store,
            registry=registry,
            worker=worker,
            policies=self.policies,
            prices=prices or PriceTable({}),
        )
        self.backlog = RecordBacklog(worker.max_unrecorded)
        self.journal = DispatchJournal(store.mark_dispatched)

        # A channel's lease outlives the longest try of all its providers (each send is
        # cut at send_timeout_s, or after its handover at its adapter's answer wait;
        # each rate wait at MAX_RATE_WAIT_S), so a live sender is never overtaken. Per
        # channel: one adapter's long answer wait does not delay the recovery of every
        # channel's claims after a crash.
        def try_s(provider: Provider) -> float:
            answer = runtime.adapter(provider).answer_timeout_s
            return max(worker.send_timeout_s, answer) + MAX_RATE_WAIT_S

        self.leases = {
            channel: timedelta(seconds=sum(try_s(p) for p in providers) + 10)
            for channel, providers in registry.channels.items()
        }
        # For a group whose channel is not given (tests): the longest.
        self.lease = max(
            self.leases.values(),
            default=timedelta(seconds=worker.send_timeout_s + MAX_RATE_WAIT_S + 10),
        )
        # Called after every provider call, on the event loop; quick, and must not raise.
        # The guard first: its circuit breaker counts the provider's failures.
        self.observers: list[SendObserver] = [self.guard.observe]

    def _observe(self, call: ProviderCall) -> None:
        for observer in self.observers:
            try:
                observer(call)
            except Exception:  # an observer's bug never fails a delivery
                log.exception("send observer failed")

    def send(self, delivery_ids: Sequence[UUID], channel: str | None = None) -> list[SendOutcome]:
        """Send what can be claimed of these deliveries (all of ``channel``, when given);
        one outcome per id."""
        clock = time.perf_counter()
        lease = self.leases.get(channel, self.lease) if channel else self.lease
        claims = self.store.claim(delivery_ids, lease)
        outcomes: list[SendOutcome] = []
        for delivery_id, why in claims.not_claimed.items():
            if why is ClaimOutcome.BUSY:
                # Another copy is in flight, or its worker died and the lease must run
                # out: look again soon (a look is one UPDATE).
                outcomes.append(SendOutcome(delivery_id, None, random.randint(500, 2000)))
            else:
                log.debug("delivery needs nothing", delivery_id=str(delivery_id), claim=why)
                outcomes.append(SendOutcome(delivery_id, None))
        admitted = claims.claimed
        if self.gate is not None and admitted:
            admitted, gated = self.gate.admit(admitted)
            outcomes.extend(gated)
        now = utcnow()
        concluded: list[tuple[ClaimedDelivery, Tried]] = []
        pending: dict[Future[Tried], ClaimedDelivery] = {}
        progress: dict[UUID, _Progress] = {}
        for claimed in admitted:
            progress[claimed.delivery_id] = _Progress()
            # A held delivery's age counts from when it was due, not from its planning.
            since = claimed.due_at or claimed.created_at
            if (now - since).total_seconds() > self.worker.max_age_s:
                expired = PermanentFailure(f"expired: not sent within {self.worker.max_age_s:g}s")
                concluded.append((claimed, Failed(expired, None, now)))
            else:
                try_ = self._try_providers(claimed, progress[claimed.delivery_id])
                pending[self.runtime.submit(try_)] = claimed
        # Nothing here can outwait the lease; past it, another worker may send.
        deadline = time.monotonic() + lease.total_seconds() - 5
        try:
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
                    elif len(done) < len(pending) and not self.backlog.blocked:
                        window = min(RECORD_WINDOW_S, max(0.0, deadline - time.monotonic()))
                        done, _ = wait(pending, timeout=window)
                    for future in done:
                        claimed = pending.pop(future)
                        tried = _result(future, self.worker, progress[claimed.delivery_id])
                        concluded.append((claimed, tried))
                try:
                    outcomes.extend(self.recorder.record(concluded))
                finally:
                    # Written, or given up on (the lease will run out): either way no
                    # longer this process's to bound.
                    self.backlog.settle(progress[c.delivery_id].entry for c, _ in concluded)
                concluded = []
        finally:
            # Every try of the group is settled, once: a send cut at the lease whose
            # answer comes later, or one still running when recording failed for good
            # (the exception goes on to Dramatiq), is never recorded here, so its
            # result must not hold back this process's calls.
            self.backlog.settle(p.entry for p in progress.values())
        counts = Counter(o.status.value if o.status else "nothing-to-do" for o in outcomes)
        log.info(
            "deliveries done",
            group=len(outcomes),
            seconds=round(time.perf_counter() - clock, 3),
            **{k.replace("-", "_"): v for k, v in counts.items()},
        )
        return outcomes

    async def _try_providers(self, claimed: ClaimedDelivery, progress: _Progress) -> Tried:
        """The channel's providers in order until one accepts (runs on the event loop)."""
        with structlog.contextvars.bound_contextvars(
            delivery_id=str(claimed.delivery_id),
            event_id=str(claimed.event_id),
            dossier_code=claimed.dossier_code,
            channel=claimed.channel,
        ):
            message = claimed.message()
            providers = self.registry.providers(claimed.channel)
            if claimed.uncertain_provider is not None:
                settled = await self._settle_uncertain(claimed, message)
                if not isinstance(settled, list):
                    return settled
                providers = settled
            failure: DeliveryFailure | None = None
            provider_name: str | None = None
            started_at = utcnow()
            for provider in providers:
                answer = await self._call(provider, message, claimed.attempt, progress)
                if answer is None:
                    continue  # its circuit is open: the next provider, if any
                if isinstance(answer, Deferred):
                    return answer
                provider_name = provider.name
                if isinstance(answer, SendResult):
                    return Accepted(provider.name, answer, started_at)
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
                return Deferred(
                    "every provider of the channel is paused (circuit open)", self.backoff_ms(1)
                )
            return Failed(failure, provider_name, started_at)

    async def _settle_uncertain(
        self, claimed: ClaimedDelivery, message: OutboundMessage
    ) -> list[Provider] | Tried:
        """The previous call's outcome is unknown: apply its provider's policy. The
        providers to try now, or what this try came to without a send."""
        name = claimed.uncertain_provider
        assert name is not None
        now = utcnow()
        provider = next(
            (p for p in self.registry.providers(claimed.channel) if p.name == name), None
        )
        if provider is None:
            return Held(
                name,
                f"outcome of the call to {name} unknown; it no longer serves "
                f"the {claimed.channel} channel",
                now,
            )
        policy = self.policies[name]
        log.warning("previous call's outcome unknown", provider=name, policy=policy.value)
        if policy is UncertainSendPolicy.RESEND:
            window = provider.adapter_class.dedupe_window_s
            if window is not None and (now - claimed.created_at).total_seconds() > window:
                return Held(
                    name,
                    f"outcome of the call to {name} unknown, and past the "
                    f"{window / 3600:g} h in which it drops a repeat",
                    now,
                )
            # The same provider only: it drops the repeat, another one would not.
            return [provider]
        if policy is UncertainSendPolicy.VERIFY:
            try:
                answer = await asyncio.wait_for(
                    self.runtime.adapter(provider).lookup(message), self.worker.send_timeout_s
                )
            except Exception as exc:  # the lookup failed: ask again on the next try
                reason = exc.reason if isinstance(exc, DeliveryFailure) else repr(exc)
                return Failed(
                    TemporaryFailure(f"status lookup failed: {reason}", maybe_sent=True),
                    name,
                    now,
                )
            if answer is LookupAnswer.NOT_FOUND:
                return self.registry.providers(claimed.channel)
            return Accepted(
                name,
                SendResult(
                    delivered=answer is LookupAnswer.DELIVERED,
                    details={"verified_by_lookup": answer.value},
                ),
                now,
            )
        return Held(name, f"outcome of the call to {name} unknown; held for an admin", now)

    async def _call(
        self, provider: Provider, message: OutboundMessage, attempt: int, progress: _Progress
    ) -> SendResult | DeliveryFailure | Deferred | None:
        """One call of one provider, within its rate limit and circuit breaker, after the
        backlog of unrecorded results lets it and its dispatch mark is written; None when
        its circuit is open."""
        async with (
            self.runtime.slot(provider),
            self.guard.call(provider.name, MAX_RATE_WAIT_S) as admission,
        ):
            if admission is Admission.RATE_LIMITED:
                return Deferred(f"rate limit of {provider.name} reached", self.backoff_ms(1))
            if admission is Admission.CIRCUIT_OPEN:
                return None
            await self.backlog.admit()
            try:
                await self.journal.mark(DispatchMark(message.delivery_id, provider.name, attempt))
            except Exception as exc:
                log.warning("dispatch mark not written; the send waits", error=repr(exc))
                return Deferred("dispatch mark not written", self.backlog_retry_ms())
            progress.marked = provider.name
            clock = time.perf_counter()
            answer = await self._send(provider, message)
            if isinstance(answer, SendResult) or (
                isinstance(answer, TemporaryFailure) and answer.maybe_sent
            ):
                self.backlog.count(progress.entry)
        seconds = time.perf_counter() - clock
        if isinstance(answer, SendResult):
            outcome = DeliveryStatus.DELIVERED if answer.delivered else DeliveryStatus.SENT
            call = ProviderCall(
                message.channel, provider.name, outcome, seconds, details=answer.details
            )
        else:
            permanent = isinstance(answer, PermanentFailure)
            call = ProviderCall(
                message.channel,
                provider.name,
                DeliveryStatus.PERMANENT_FAILURE if permanent else DeliveryStatus.TEMPORARY_FAILURE,
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
        # How long a send past its handover may take in all, from its start (the lease
        # is sized for the longer of this and send_timeout_s).
        answer_wait = adapter.answer_timeout_s if adapter.reports_handover else 0.0
        with watching_handover() as handover:
            # A task of its own (it sees the handover: tasks copy the context), so that a
            # send past its handover when send_timeout_s runs out can be waited for.
            call = asyncio.ensure_future(adapter.send(message))
            try:
                try:
                    return await asyncio.wait_for(asyncio.shield(call), self.worker.send_timeout_s)
                except TimeoutError:
                    # Handed over: the provider may be taking it. Cutting now would make
                    # it `unknown` (held for an admin); the adapter says how long its
                    # protocol lets the answer take (SMTP's end of DATA: RFC 5321 has
                    # clients wait 10 minutes), and the lease covers that wait.
                    more = answer_wait - self.worker.send_timeout_s
                    if not handover.reached or more <= 0:
                        raise
                    return await asyncio.wait_for(call, more)
            except TimeoutError:
                if not handover.reached and adapter.reports_handover:
                    return TemporaryFailure(
                        f"not sent within {self.worker.send_timeout_s:g}s "
                        "(cut before the message was handed over)",
                        code="timeout-before-handover",
                    )
                waited = self.worker.send_timeout_s
                if handover.reached:
                    waited = max(waited, answer_wait)
                return TemporaryFailure(f"no answer within {waited:g}s", maybe_sent=True)
            except DeliveryFailure as exc:
                return exc
            except Exception as exc:  # an adapter's bug: it may have sent
                log.exception("adapter raised an unexpected error", provider=provider.name)
                return TemporaryFailure(f"adapter error: {exc!r}", maybe_sent=True)
            finally:
                call.cancel()  # cut (or this try cancelled): the call stops too

    def backlog_retry_ms(self) -> int:
        return self.backoff_ms(1)

    def backoff_ms(self, attempt: int, retry_after_s: float | None = None) -> int:
        """Exponential backoff with jitter, at least what the provider asked for."""
        return backoff_ms(self.worker, attempt, retry_after_s)


def _result(future: Future[Tried], worker: WorkerSettings, progress: _Progress) -> Tried:
    """A finished (or abandoned) try; one abandoned after its call was marked may have
    sent, one abandoned before never called anyone."""
    if future.cancelled():
        if progress.marked is None:
            return Deferred("gave up waiting to start the call", worker.min_backoff_ms)
        return Failed(
            TemporaryFailure(f"no answer within {worker.send_timeout_s:g}s", maybe_sent=True),
            progress.marked,
            utcnow(),
        )
    try:
        return future.result()
    except Exception as exc:  # a bug before any provider call (adapter calls are caught)
        log.error("sending failed before a provider call", error=repr(exc), exc_info=exc)
        return Failed(TemporaryFailure(f"internal error: {exc!r}"), None, utcnow())
