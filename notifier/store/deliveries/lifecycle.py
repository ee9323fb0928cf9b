"""The delivery log: planned deliveries, their status lifecycle and every attempt.

Lifecycle (after GOV.UK Notify)::

    queued ──claim──► sending ──► sent ──receipt──► delivered
       ▲                 │   └──► permanent-failure     (never retried)
       └── retry ── temporary-failure ◄┘                 (retried with backoff)
    suppressed: planned but not sent (opt-out, quiet rules)
    unknown: a call whose outcome is unknown, held for an admin (resend or mark sent)
    scheduled ──due──► queued   held for later (quiet hours, a frequency cap, coalescing)

A *held* delivery is a row in ``scheduled`` with a ``due_at`` time and a
``hold_reason`` (:class:`HoldReason`); no broker message waits for it. The sweeper
(:mod:`notifier.pipeline.sweeper`) calls :meth:`DeliveryStore.release_due`, which moves
due rows to ``queued`` exactly once (claimed with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so two sweepers never take the same row), and enqueues them into the normal
send path. A message that reaches a delivery still held does nothing
(:attr:`ClaimOutcome.HELD`): the release will send it.

A delivery is claimed with a lease before a send, so two workers holding copies of
the same message never both send; a worker that dies mid-send leaves a lease that
expires, and the message the broker redelivers claims it again.

Before each provider call the worker writes a *dispatch mark* (provider, attempt) on
the delivery; recording the outcome clears it. A claim that finds a mark knows the
last call may have reached the provider, and the sender applies that provider's
policy for an uncertain send (resend, verify, hold) instead of simply sending.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from notifier.adapter import REPLY_STATUS, InboundReference, OutboundMessage
from notifier.costs import Charge, CostSource
from notifier.store import Database
from notifier.store.database import locked_once
from notifier.store.schema import (
    deliveries,
    delivery_attempts,
    events,
    receipt_nonces,
    utcnow,
)
from notifier.store.statuses import record_delivery_changes


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    TEMPORARY_FAILURE = "temporary-failure"
    PERMANENT_FAILURE = "permanent-failure"
    SUPPRESSED = "suppressed"
    # The last provider call's outcome is unknown (the worker died during it, or the
    # adapter said it may have sent) and the provider does not drop repeats: held until
    # an admin resends it or marks it sent.
    UNKNOWN = "unknown"
    # Held for later: sent when its ``due_at`` comes (see :class:`HoldReason`).
    SCHEDULED = "scheduled"
    # Coalesced away: a later status of the same dossier, channel and recipient was
    # sent in its place (``superseded_by``). Final; never sent.
    SUPERSEDED = "superseded"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = {
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.PERMANENT_FAILURE,
    DeliveryStatus.SUPPRESSED,
    DeliveryStatus.UNKNOWN,
    DeliveryStatus.SUPERSEDED,
}
_CLAIMABLE = (DeliveryStatus.QUEUED, DeliveryStatus.TEMPORARY_FAILURE)

# The statuses announced on the status stream (and callbacks): a delivery reaching one
# gets an outbox row in the same transaction (notifier.store.statuses). Announcing a new
# status (superseded, scheduled...) is one line here, as long as the status is set
# through this module's transitions.
ANNOUNCED: frozenset[str] = frozenset(s.value for s in _FINAL)


def set_status(
    connection: Connection,
    delivery_id: UUID,
    *,
    only_from: Collection[str],
    values: dict[str, Any],
    only_if: sa.ColumnElement[bool] | None = None,
) -> bool:
    """Move one delivery from one of ``only_from`` to ``values["status"]`` (with the
    other columns in ``values``) and announce it if announced, in the caller's
    transaction: the transition of an admin's replay or resolution. ``only_if`` adds a
    condition. Returns whether it changed (a concurrent change wins, and this one does
    nothing)."""
    d = deliveries.c
    condition = sa.and_(d.delivery_id == delivery_id, d.status.in_(list(only_from)))
    if only_if is not None:
        condition = sa.and_(condition, only_if)
    changed = connection.execute(sa.update(deliveries).where(condition).values(**values)).rowcount
    if changed:
        announce(connection, [delivery_id])
    return bool(changed)


def announce(
    connection: Connection, delivery_ids: Collection[UUID], *, send_outcome: bool = False
) -> None:
    """Record the announced status changes of these deliveries (those now in an
    ``ANNOUNCED`` status) in the caller's transaction, right after its update.
    ``send_outcome``: the changes end sends (a provider's answer, or retries given up),
    not receipts or admins' decisions."""
    record_delivery_changes(connection, delivery_ids, ANNOUNCED, send_outcome=send_outcome)


class HoldReason(StrEnum):
    """Why a delivery is held (``deliveries.hold_reason``); kept after its release, so
    reports can tell how many deliveries each reason delayed."""

    QUIET_HOURS = "quiet_hours"  # the citizen's night, in Vietnam time
    FREQUENCY_CAP = "frequency_cap"  # over the recipient's cap: sent in the next slot
    COALESCING = "coalescing"  # waiting to be merged with later news of the same dossier


class SuppressReason(StrEnum):
    """Why a delivery is ``suppressed`` (``deliveries.suppressed_reason``)."""

    OPTED_OUT = "opted_out"  # an opt-out (STOP, the portal, an operator)
    CHANNEL_OFF = "channel_off"  # the citizen turned the channel off in their preferences
    FREQUENCY_CAP = "frequency_cap"  # over the recipient's cap, and the routing says suppress
    DUPLICATE = "duplicate_content"  # the same text went to the same recipient just before
    BUDGET = "budget"  # the agency spent its monthly budget and routing says cheaper only


@dataclass(frozen=True)
class PlannedDelivery:
    delivery_id: UUID
    channel: str
    recipient: str
    recipient_masked: str
    recipient_hash: str
    language: str
    template: str
    content: dict[str, str]
    status: DeliveryStatus = DeliveryStatus.QUEUED
    # Set together with status ``scheduled``: when to send, and why it waits.
    due_at: datetime | None = None
    hold_reason: HoldReason | None = None
    suppressed_reason: SuppressReason | None = None
    # The keyed hash of the event's portal account id (its preferences apply), and of
    # this delivery's channel, recipient and text (identical messages are sent once).
    account_hash: str | None = None
    content_hash: str | None = None

    def suppressed(self, reason: SuppressReason) -> PlannedDelivery:
        """This delivery kept but not sent, with the reason."""
        return replace(
            self,
            status=DeliveryStatus.SUPPRESSED,
            suppressed_reason=reason,
            due_at=None,
            hold_reason=None,
        )

    def held_until(self, due_at: datetime, reason: HoldReason) -> PlannedDelivery:
        """This delivery held until ``due_at`` (recorded ``scheduled``, not enqueued)."""
        return replace(self, status=DeliveryStatus.SCHEDULED, due_at=due_at, hold_reason=reason)


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery_id: UUID
    event_id: UUID
    channel: str
    recipient: str
    language: str
    content: dict[str, str]
    dossier_code: str
    agency_code: str
    event_status: str
    attempt: int
    created_at: datetime
    # When a held delivery was due (None: never held): its age counts from then.
    due_at: datetime | None = None
    # What the send-time gate checks: the citizen's identities and the text's hash.
    recipient_hash: str = ""
    account_hash: str | None = None
    content_hash: str | None = None
    # When an earlier try passed the gate (it holds its place under the caps since).
    counted_at: datetime | None = None
    # Set when the claim found a dispatch mark: the provider the last call went to,
    # whose outcome was never recorded.
    uncertain_provider: str | None = None

    def message(self) -> OutboundMessage:
        """What the channel's adapters are given to send."""
        in_reply_to = None
        if self.event_status == REPLY_STATUS:
            # A reply to a citizen's message carries what it answers in its content
            # (written by notifier.store.inbound).
            with contextlib.suppress(ValueError, TypeError, KeyError):
                in_reply_to = InboundReference(
                    provider_message_id=self.content.get("in_reply_to") or None,
                    received_at=datetime.fromisoformat(self.content["in_reply_received_at"]),
                )
        return OutboundMessage(
            in_reply_to=in_reply_to,
            delivery_id=self.delivery_id,
            event_id=self.event_id,
            channel=self.channel,
            recipient=self.recipient,
            language=self.language,
            parts=self.content,
            dossier_code=self.dossier_code,
            agency_code=self.agency_code,
            status=self.event_status,
        )


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    FINISHED = "finished"  # already in a final state: nothing to do
    BUSY = "busy"  # another worker holds an unexpired lease
    HELD = "held"  # scheduled for later: the sweeper enqueues it when due
    MISSING = "missing"


@dataclass(frozen=True)
class Claims:
    """What one claim of several deliveries got: the claimed ones, and why not the rest."""

    claimed: list[ClaimedDelivery]
    not_claimed: dict[UUID, ClaimOutcome]


@dataclass(frozen=True)
class AttemptRecord:
    """The outcome of one attempt, as :meth:`DeliveryStore.finish_attempts` records it.

    ``counted=False`` keeps the attempt out of the delivery's count (a provider that
    asked us to come back at a set time, e.g. after its night-time quiet hours)."""

    claimed: ClaimedDelivery
    status: DeliveryStatus
    provider: str | None
    started_at: datetime
    error: str | None = None
    error_code: str | None = None
    provider_message_id: str | None = None
    details: dict[str, Any] | None = None
    counted: bool = True
    # A permanent failure because the retries ran out (a dead letter), not because the
    # provider refused the message: stored in ``deliveries.exhausted``.
    exhausted: bool = False
    # Keep the dispatch mark: the call may have reached the provider (maybe_sent, or
    # the delivery is held as unknown), so the next claim applies the provider's policy.
    keep_mark: bool = False
    # An accepted send's segments and estimated cost (notifier.costs), stored with it.
    charge: Charge | None = None


@dataclass(frozen=True)
class Suppress:
    """The send-time gate's verdict: do not send this claim (kept, with the reason)."""

    reason: SuppressReason
    text: str


@dataclass(frozen=True)
class Hold:
    """The send-time gate's verdict: hold this claim until ``due_at``."""

    due_at: datetime
    reason: HoldReason


Verdict = Suppress | Hold | None  # None: send it


@dataclass
class RecipientHistory:
    """What a frequency cap looks at: when this recipient's deliveries on the channel
    passed the gate (within the window asked for), with their texts' hashes."""

    counted: list[tuple[datetime, str | None]]

    def since(self, moment: datetime) -> list[datetime]:
        return [at for at, _content in self.counted if at >= moment]

    def sent_same_text(self, content_hash: str | None, since: datetime) -> bool:
        return content_hash is not None and any(
            content == content_hash and at >= since for at, content in self.counted
        )


@dataclass(frozen=True)
class DispatchMark:
    """A provider call about to start: written durably before the call."""

    delivery_id: UUID
    provider: str
    attempt: int


_d = deliveries.c
_CLAIMABLE_NOW = sa.or_(
    _d.status.in_([s.value for s in _CLAIMABLE]),
    # A worker that died mid-send: its lease has run out.
    sa.and_(_d.status == DeliveryStatus.SENDING.value, _d.lease_until < sa.bindparam("now")),
)
_CLAIM = (
    sa.update(deliveries)
    .where(
        _d.delivery_id.in_(
            # Rows another claim holds are skipped, not waited for: two workers claiming
            # overlapping groups never deadlock (PostgreSQL; SQLite has one writer).
            sa.select(_d.delivery_id)
            .where(_d.delivery_id.in_(sa.bindparam("ids", expanding=True)), _CLAIMABLE_NOW)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(
        status=DeliveryStatus.SENDING.value,
        attempts=_d.attempts + 1,
        lease_until=sa.bindparam("lease_until"),
        updated_at=sa.bindparam("now"),
    )
    .returning(
        _d.delivery_id,
        _d.event_id,
        _d.channel,
        _d.recipient,
        _d.language,
        _d.content,
        _d.dossier_code,
        _d.agency_code,
        _d.event_status,
        _d.attempts,
        _d.created_at,
        _d.due_at,
        _d.recipient_hash,
        _d.account_hash,
        _d.content_hash,
        _d.counted_at,
        # Not changed by the claim: the mark left by the previous claim, if any.
        _d.dispatch_provider,
    )
)
_STATUS_OF = sa.select(_d.delivery_id, _d.status).where(
    _d.delivery_id.in_(sa.bindparam("ids", expanding=True))
)


@dataclass(frozen=True)
class FailedDelivery:
    """A delivery that failed for good, with its event's payload (None once purged):
    what planning its fallback needs."""

    delivery_id: UUID
    event_id: UUID
    channel: str
    fallback_of: UUID | None
    payload: dict[str, Any] | None
    # Who it went to (None once purged), and, for a fallback, who its original went to.
    recipient: str | None = None
    original_recipient: str | None = None


class DeliveryStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def insert_planned(
        self,
        connection: Connection,
        planned: Sequence[tuple[Any, Sequence[PlannedDelivery]]],
        *,
        fallback_of: UUID | None = None,
        ignore_existing: bool = False,
    ) -> None:
        """Record planned deliveries, each with its event, in the caller's transaction
        (with the event rows).

        ``ignore_existing`` skips deliveries whose key (event, channel, recipient) exists.
        """
        now = utcnow()
        rows = [
            {
                "delivery_id": p.delivery_id,
                "event_id": event.event_id,
                "dossier_code": event.dossier.code,
                "agency_code": event.agency.code,
                "procedure_code": event.dossier.procedure.code,
                "event_status": event.dossier.status.value,
                "channel": p.channel,
                "language": p.language,
                "template": p.template,
                "recipient_masked": p.recipient_masked,
                "recipient_hash": p.recipient_hash,
                "recipient": p.recipient,
                "content": p.content,
                "status": p.status.value,
                "due_at": p.due_at,
                "hold_reason": None if p.hold_reason is None else p.hold_reason.value,
                "suppressed_reason": None
                if p.suppressed_reason is None
                else p.suppressed_reason.value,
                "account_hash": p.account_hash,
                "content_hash": p.content_hash,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "fallback_of": fallback_of,
            }
            for event, group in planned
            for p in group
        ]
        if not rows:
            return
        statement = (
            self.database.insert_ignore(deliveries, "event_id", "channel", "recipient_hash")
            if ignore_existing
            else deliveries.insert()
        )
        connection.execute(statement, rows)
        # Planned already final (suppressed by an opt-out): that is a change to announce.
        # An ignored row's fresh id is not in the table, so it announces nothing twice.
        announce(connection, [r["delivery_id"] for r in rows if r["status"] in ANNOUNCED])

    def existing(
        self, event_id: UUID, keys: Sequence[tuple[str, str]], *, fallback_of: UUID
    ) -> list[tuple[UUID, str]]:
        """The unsent fallback deliveries of ``fallback_of`` among (channel, recipient hash)."""
        d = deliveries.c
        query = sa.select(d.delivery_id, d.channel, d.recipient_hash).where(
            d.event_id == event_id,
            d.fallback_of == fallback_of,
            d.status.in_([s.value for s in _CLAIMABLE]),
        )
        wanted = set(keys)
        with self.database.engine.connect() as connection:
            return [
                (row.delivery_id, row.channel)
                for row in connection.execute(query)
                if (row.channel, row.recipient_hash) in wanted
            ]

    def permanently_failed(self, delivery_id: UUID) -> FailedDelivery | None:
        """The delivery with its event's payload, if its status is permanent-failure."""
        d, e = deliveries.c, events.c
        original = deliveries.alias("original")
        query = (
            sa.select(
                d.event_id,
                d.channel,
                d.fallback_of,
                e.payload,
                d.recipient,
                original.c.recipient.label("original_recipient"),
            )
            .select_from(
                deliveries.outerjoin(events, e.event_id == d.event_id).outerjoin(
                    original, original.c.delivery_id == d.fallback_of
                )
            )
            .where(
                d.delivery_id == delivery_id,
                d.status == DeliveryStatus.PERMANENT_FAILURE.value,
            )
        )
        with self.database.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return FailedDelivery(
            delivery_id,
            row.event_id,
            row.channel,
            row.fallback_of,
            row.payload,
            row.recipient,
            row.original_recipient,
        )

    def insert_fallbacks(
        self, event: Any, planned: Sequence[PlannedDelivery], *, fallback_of: UUID
    ) -> list[tuple[UUID, str]]:
        """Record the fallback deliveries of ``fallback_of`` (at most once each: the key
        event, channel, recipient) and return those still to send, as (id, channel)."""
        with self.database.begin() as connection:
            for p in planned:
                self.insert_planned(
                    connection, [(event, [p])], fallback_of=fallback_of, ignore_existing=True
                )
        return self.existing(
            event.event_id,
            [(p.channel, p.recipient_hash) for p in planned],
            fallback_of=fallback_of,
        )

    def unfinished_for_events(
        self, event_ids: Sequence[UUID]
    ) -> dict[UUID, list[tuple[UUID, str]]]:
        """Deliveries of these events still waiting to be sent (for re-enqueueing)."""
        d = deliveries.c
        query = sa.select(d.event_id, d.delivery_id, d.channel).where(
            d.event_id.in_(event_ids), d.status.in_([s.value for s in _CLAIMABLE])
        )
        found: dict[UUID, list[tuple[UUID, str]]] = {}
        with self.database.engine.connect() as connection:
            for row in connection.execute(query):
                found.setdefault(row.event_id, []).append((row.delivery_id, row.channel))
        return found

    def claim(self, delivery_ids: Sequence[UUID], lease: timedelta) -> Claims:
        """Atomically move deliveries to ``sending`` under a lease, those nobody else has.

        One ``UPDATE ... RETURNING`` for the group; statuses are read only for the ids
        not claimed, to say why."""
        now = utcnow()
        ids = list(dict.fromkeys(delivery_ids))
        with self.database.begin() as connection:
            rows = connection.execute(
                _CLAIM, {"ids": ids, "now": now, "lease_until": now + lease}
            ).all()
            claimed = [_claimed(row._mapping) for row in rows]
            rest = set(ids) - {c.delivery_id for c in claimed}
            statuses = (
                {
                    row.delivery_id: row.status
                    for row in connection.execute(_STATUS_OF, {"ids": list(rest)})
                }
                if rest
                else {}
            )
        not_claimed = {}
        for delivery_id in rest:
            status = statuses.get(delivery_id)
            if status is None:
                not_claimed[delivery_id] = ClaimOutcome.MISSING
            elif DeliveryStatus(status).final:
                not_claimed[delivery_id] = ClaimOutcome.FINISHED
            elif status == DeliveryStatus.SCHEDULED:
                not_claimed[delivery_id] = ClaimOutcome.HELD
            else:
                not_claimed[delivery_id] = ClaimOutcome.BUSY
        return Claims(claimed, not_claimed)

    def release(self, claims: Sequence[ClaimedDelivery], reason: str) -> None:
        """Give claims back without counting an attempt (no provider was called in this
        try, or only ones that answered for sure). A claim that found a dispatch mark
        keeps it: the earlier call's outcome is still unknown."""
        if not claims:
            return
        d = deliveries.c
        with self.database.begin() as connection:
            for first, status in (
                (True, DeliveryStatus.QUEUED),
                (False, DeliveryStatus.TEMPORARY_FAILURE),
            ):
                for uncertain in (False, True):
                    ids = [
                        c.delivery_id
                        for c in claims
                        if (c.attempt == 1) is first
                        and (c.uncertain_provider is not None) is uncertain
                    ]
                    if not ids:
                        continue
                    marks = (
                        {} if uncertain else {"dispatch_provider": None, "dispatch_attempt": None}
                    )
                    connection.execute(
                        sa.update(deliveries)
                        .where(d.delivery_id.in_(ids), d.status == DeliveryStatus.SENDING.value)
                        .values(
                            status=status.value,
                            attempts=d.attempts - 1,
                            lease_until=None,
                            last_error=reason,
                            updated_at=utcnow(),
                            **marks,
                        )
                    )
                    if status.value in ANNOUNCED:
                        announce(connection, ids)

    def dead_letter(self, delivery_ids: Sequence[UUID], reason: str) -> dict[UUID, DeliveryStatus]:
        """Give up on deliveries whose broker message was dead-lettered (a poison
        message: the queue's delivery limit ran out): a dead letter with ``reason``.

        One that may have reached a provider (a dispatch mark is left) becomes
        ``unknown``, held for an admin, never ``permanent-failure``: it may have been
        sent. One already final is left as it is. Returns the new status of those
        changed; no fallback is planned (an operator replays a dead letter)."""
        if not delivery_ids:
            return {}
        d = deliveries.c
        changed: dict[UUID, DeliveryStatus] = {}
        with self.database.begin() as connection:
            rows = connection.execute(
                sa.select(d.delivery_id, d.status, d.dispatch_provider)
                .where(d.delivery_id.in_(list(delivery_ids)))
                .with_for_update()
            ).all()
            for row in rows:
                if DeliveryStatus(row.status).final:
                    continue
                status = (
                    DeliveryStatus.UNKNOWN
                    if row.dispatch_provider is not None
                    else DeliveryStatus.PERMANENT_FAILURE
                )
                connection.execute(
                    sa.update(deliveries)
                    .where(d.delivery_id == row.delivery_id, d.status == row.status)
                    .values(
                        status=status.value,
                        lease_until=None,
                        last_error=reason[:2000],
                        exhausted=status is DeliveryStatus.PERMANENT_FAILURE,
                        updated_at=utcnow(),
                    )
                )
                changed[row.delivery_id] = status
            # Final statuses, announced to the publisher like any other outcome.
            announce(connection, list(changed), send_outcome=True)
        return changed

    def stale(self, older_than: timedelta, limit: int) -> list[tuple[UUID, str]]:
        """Deliveries waiting with no message in flight: claimable ones untouched for
        ``older_than``, and claims whose worker died (lease long expired). Their
        ``updated_at`` is bumped so the next sweep does not take them again at once."""
        now = utcnow()
        d = deliveries.c
        condition = sa.or_(
            sa.and_(d.status.in_([s.value for s in _CLAIMABLE]), d.updated_at < now - older_than),
            sa.and_(d.status == DeliveryStatus.SENDING.value, d.lease_until < now - older_than),
        )
        with self.database.begin() as connection:
            found = connection.execute(
                sa.select(d.delivery_id, d.channel).where(condition).limit(limit)
            ).all()
            if found:
                connection.execute(
                    sa.update(deliveries)
                    .where(d.delivery_id.in_([row.delivery_id for row in found]))
                    .values(updated_at=now)
                )
        return [(row.delivery_id, row.channel) for row in found]

    def hold(
        self, delivery_ids: Sequence[UUID], due_at: datetime, reason: HoldReason
    ) -> list[UUID]:
        """Hold recorded deliveries that are waiting to be sent (``queued``, or a
        temporary failure waiting for its retry) until ``due_at``; returns those held. A
        delivery being sent or already finished is left alone."""
        if not delivery_ids:
            return []
        d = deliveries.c
        with self.database.begin() as connection:
            rows = connection.execute(
                sa.update(deliveries)
                .where(
                    d.delivery_id.in_(list(delivery_ids)),
                    d.status.in_([s.value for s in _CLAIMABLE]),
                )
                .values(
                    status=DeliveryStatus.SCHEDULED.value,
                    due_at=due_at,
                    hold_reason=reason.value,
                    updated_at=utcnow(),
                )
                .returning(d.delivery_id)
            ).all()
        return [row.delivery_id for row in rows]

    def release_due(self, limit: int, now: datetime | None = None) -> list[tuple[UUID, str]]:
        """Move held deliveries whose ``due_at`` has come to ``queued``, at most
        ``limit`` of the longest due first; returns them as (id, channel) for the caller
        to enqueue. Each row is released once: a concurrent release skips the rows this
        one has locked (PostgreSQL) or finds them no longer ``scheduled``."""
        now = now or utcnow()
        d = deliveries.c
        due = locked_once(
            sa.select(d.delivery_id)
            .where(d.status == DeliveryStatus.SCHEDULED.value, d.due_at <= now)
            .order_by(d.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True),
            "due",
        )
        with self.database.begin() as connection:
            rows = connection.execute(
                sa.update(deliveries)
                .where(
                    d.delivery_id.in_(sa.select(due.c.delivery_id)),
                    d.status == DeliveryStatus.SCHEDULED.value,
                )
                # updated_at = now: the stale sweep re-enqueues it only if this
                # release's message is lost (a crash before the enqueue).
                .values(status=DeliveryStatus.QUEUED.value, updated_at=now)
                .returning(d.delivery_id, d.channel)
            ).all()
        return [(row.delivery_id, row.channel) for row in rows]

    def hold_again(self, delivery_ids: Sequence[UUID]) -> None:
        """Undo a release whose enqueue failed: those still ``queued`` are held again
        with their own (past) due time, so the next release takes them at once."""
        if not delivery_ids:
            return
        d = deliveries.c
        with self.database.begin() as connection:
            connection.execute(
                sa.update(deliveries)
                .where(
                    d.delivery_id.in_(list(delivery_ids)),
                    d.status == DeliveryStatus.QUEUED.value,
                    d.due_at.is_not(None),
                )
                .values(status=DeliveryStatus.SCHEDULED.value)
            )

    def lock_dossiers(self, connection: Connection, keys: Collection[CoalescingKey]) -> None:
        """PostgreSQL: take the dossiers' transaction advisory locks, in order, before
        the caller records their news, so two workers ingesting news of one dossier
        coalesce it one after the other (and never wait on each other's rows while
        holding a lock the other needs). SQLite has one writer: nothing to do."""
        if self.database.is_sqlite:
            return
        for agency_code, dossier_code in sorted({(k.agency_code, k.dossier_code) for k in keys}):
            connection.execute(
                sa.select(sa.func.pg_advisory_xact_lock(_lock_key(agency_code, dossier_code)))
            )

    def gate(
        self,
        channel: str,
        claims: Sequence[ClaimedDelivery],
        decide: Callable[[ClaimedDelivery, RecipientHistory], Verdict],
        *,
        history_since: datetime | None,
        now: datetime,
    ) -> dict[UUID, Verdict]:
        """The send-time gate for claims of one channel, in one transaction: each claim's
        verdict from ``decide``; those to send are counted (``counted_at``), the others
        suppressed or held, before any provider call.

        With ``history_since`` (the channel has a cap) each recipient's counted
        deliveries since then are read under a lock per (channel, recipient), so two
        workers never both fill the last slot of a cap or both send the same text:
        PostgreSQL advisory transaction locks, taken in order; on SQLite the first write
        takes the one writer's lock."""
        verdicts: dict[UUID, Verdict] = {}
        if not claims:
            return verdicts
        d = deliveries.c
        with self.database.begin() as connection:
            histories: dict[str, RecipientHistory] = {}
            if history_since is not None:
                keys = sorted({f"{channel}:{c.recipient_hash}" for c in claims})
                if self.database.is_sqlite:
                    connection.execute(
                        sa.update(deliveries)
                        .where(d.delivery_id.in_([c.delivery_id for c in claims]))
                        .values(updated_at=now)
                    )
                else:
                    connection.execute(_LOCK_KEYS, {"keys": keys})
                rows = connection.execute(
                    sa.select(d.recipient_hash, d.counted_at, d.content_hash).where(
                        d.channel == channel,
                        d.recipient_hash.in_({c.recipient_hash for c in claims}),
                        d.counted_at >= history_since,
                    )
                )
                for row in rows:
                    histories.setdefault(row.recipient_hash, RecipientHistory([])).counted.append(
                        (row.counted_at, row.content_hash)
                    )
            counted: list[UUID] = []
            for claim in claims:
                history = histories.setdefault(claim.recipient_hash, RecipientHistory([]))
                verdict = decide(claim, history)
                verdicts[claim.delivery_id] = verdict
                # A claim counted by an earlier try (a retry) keeps its first place.
                if verdict is None and history_since is not None and claim.counted_at is None:
                    history.counted.append((now, claim.content_hash))
                    counted.append(claim.delivery_id)
            if counted:
                connection.execute(
                    sa.update(deliveries).where(d.delivery_id.in_(counted)).values(counted_at=now)
                )
            suppressed: list[UUID] = []
            for claim in claims:
                verdict = verdicts[claim.delivery_id]
                if verdict is None:
                    continue
                mine = sa.and_(
                    d.delivery_id == claim.delivery_id, d.status == DeliveryStatus.SENDING.value
                )
                given_back = {
                    "attempts": d.attempts - 1,  # no provider was called
                    "lease_until": None,
                    "updated_at": now,
                }
                values: dict[str, Any]
                if isinstance(verdict, Suppress):
                    values = {
                        "status": DeliveryStatus.SUPPRESSED.value,
                        "suppressed_reason": verdict.reason.value,
                        "last_error": verdict.text,
                    }
                    suppressed.append(claim.delivery_id)
                else:
                    values = {
                        "status": DeliveryStatus.SCHEDULED.value,
                        "due_at": verdict.due_at,
                        "hold_reason": verdict.reason.value,
                    }
                connection.execute(sa.update(deliveries).where(mine).values(**given_back, **values))
            # A suppression at send time is a final status like any other: announced.
            announce(connection, suppressed)
        return verdicts

    def coalesce(
        self,
        connection: Connection,
        keys: Collection[CoalescingKey],
        new_ids: Collection[UUID],
    ) -> list[tuple[UUID, UUID]]:
        """Coalesce, in the caller's (ingest's) transaction, the deliveries held for
        coalescing with those just planned (``new_ids``), per dossier, channel and
        recipient: the one of the latest event (by ``occurred_at``) stays; the other held
        ones become ``superseded``, linked to it. A held survivor is due when the
        group's first hold is (the window never slides). New deliveries that are not
        held (``always`` statuses) are never superseded. Returns (superseded, by).

        Call :meth:`lock_dossiers` first, in the same transaction. The held rows are
        locked (``FOR UPDATE``) so the sweeper's release skips them meanwhile."""
        if not keys:
            return []
        d, e = deliveries.c, events.c
        dossiers = sorted({(k.agency_code, k.dossier_code) for k in keys})
        wanted = set(keys)
        held = sa.and_(
            d.status == DeliveryStatus.SCHEDULED.value,
            d.hold_reason == HoldReason.COALESCING.value,
        )
        fresh = sa.and_(
            d.delivery_id.in_(list(new_ids)),
            d.status.in_([DeliveryStatus.SCHEDULED.value, DeliveryStatus.QUEUED.value]),
        )
        query = (
            sa.select(
                d.delivery_id,
                d.agency_code,
                d.dossier_code,
                d.channel,
                d.recipient_hash,
                d.status,
                d.due_at,
                d.hold_reason,
                d.created_at,
                e.occurred_at,
            )
            .select_from(deliveries.join(events, e.event_id == d.event_id))
            .where(
                d.dossier_code.in_([code for _agency, code in dossiers]),
                d.channel.in_(sorted({k.channel for k in keys})),
                sa.or_(held, fresh) if new_ids else held,
            )
            .with_for_update(of=deliveries)
        )
        groups: dict[CoalescingKey, list[Any]] = {}
        for row in connection.execute(query):
            key = CoalescingKey(row.agency_code, row.dossier_code, row.channel, row.recipient_hash)
            if key in wanted:
                groups.setdefault(key, []).append(row)
        now = utcnow()
        fresh_ids = set(new_ids)
        links: list[tuple[UUID, UUID]] = []
        for rows in groups.values():
            # The latest news: by when it happened; of two that happened at once, the
            # one that arrived last (this transaction's), then the one recorded last.
            rows.sort(key=lambda r: (r.occurred_at, r.delivery_id in fresh_ids, r.created_at))
            latest = rows[-1]
            waiting = [
                r
                for r in rows
                if r.status == DeliveryStatus.SCHEDULED.value
                and r.hold_reason == HoldReason.COALESCING.value
            ]
            losers = [r.delivery_id for r in waiting if r.delivery_id != latest.delivery_id]
            if not losers:
                continue
            superseded = connection.execute(
                sa.update(deliveries)
                .where(d.delivery_id.in_(losers), held)
                .values(
                    status=DeliveryStatus.SUPERSEDED.value,
                    superseded_by=latest.delivery_id,
                    updated_at=now,
                )
                .returning(d.delivery_id)
            ).all()
            links.extend((row.delivery_id, latest.delivery_id) for row in superseded)
            # Superseded is final: the publisher hears of it like of any other outcome.
            announce(connection, [row.delivery_id for row in superseded])
            # Those the losers had superseded point at the one kept, too: every
            # superseded row names the delivery that was sent in its place.
            connection.execute(
                sa.update(deliveries)
                .where(
                    d.superseded_by.in_(losers),
                    d.status == DeliveryStatus.SUPERSEDED.value,
                )
                .values(superseded_by=latest.delivery_id)
            )
            if latest in waiting:
                first_due = min(r.due_at for r in waiting)
                connection.execute(
                    sa.update(deliveries)
                    .where(d.delivery_id == latest.delivery_id, held)
                    .values(due_at=first_due)
                )
        return links

    def mark_dispatched(self, marks: Sequence[DispatchMark]) -> None:
        """Write dispatch marks, all in one transaction, before their calls start. Only
        a claim still held (``sending``, same attempt) is marked."""
        if not marks:
            return
        with self.database.begin() as connection:
            if self.database.is_sqlite:
                d = deliveries.c
                connection.execute(
                    sa.update(deliveries)
                    .where(
                        d.delivery_id == sa.bindparam("b_id"),
                        d.status == DeliveryStatus.SENDING.value,
                        d.attempts == sa.bindparam("b_attempt"),
                    )
                    .values(
                        dispatch_provider=sa.bindparam("b_provider"),
                        dispatch_attempt=sa.bindparam("b_attempt"),
                    ),
                    [
                        {"b_id": m.delivery_id, "b_provider": m.provider, "b_attempt": m.attempt}
                        for m in marks
                    ],
                )
            else:
                connection.execute(
                    _MARK_ALL,
                    {
                        "ids": [m.delivery_id for m in marks],
                        "providers": [m.provider for m in marks],
                        "attempts": [m.attempt for m in marks],
                        "sending": DeliveryStatus.SENDING.value,
                    },
                )

    def finish_attempts(self, records: Sequence[AttemptRecord]) -> None:
        """Record attempts and their deliveries' new status, all in one transaction: on
        PostgreSQL one UPDATE from arrays, and one multi-row INSERT of attempts."""
        if not records:
            return
        now = utcnow()
        with self.database.begin() as connection:
            if self.database.is_sqlite:
                _update_finished_each(connection, records, now)
            else:
                _update_finished_at_once(connection, records, now)
            connection.execute(
                delivery_attempts.insert(),
                [
                    {
                        "delivery_id": r.claimed.delivery_id,
                        "number": r.claimed.attempt,
                        "provider": r.provider,
                        "started_at": r.started_at,
                        "finished_at": now,
                        "outcome": r.status.value,
                        "error": r.error,
                        "error_code": r.error_code,
                        "provider_message_id": r.provider_message_id,
                    }
                    for r in records
                ],
            )
            announce(
                connection,
                [r.claimed.delivery_id for r in records if r.status.value in ANNOUNCED],
                send_outcome=True,
            )

    def take_nonces(self, provider: str, nonces: Sequence[str]) -> list[bool]:
        """Record receipt nonces; for each, whether it is new (a replay is not)."""
        results = []
        with self.database.begin() as connection:
            for nonce in nonces:
                # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT inserts.
                inserted = connection.execute(
                    self.database.insert_ignore(receipt_nonces, "provider", "nonce")
                    .values(provider=provider, nonce=nonce[:128], received_at=utcnow())
                    .returning(receipt_nonces.c.nonce)
                ).first()
                results.append(inserted is not None)
        return results

    def apply_receipt(
        self,
        provider: str,
        *,
        channels: Collection[str],
        delivered: bool,
        delivery_id: UUID | None,
        provider_message_id: str | None,
        error: str | None,
        error_code: str | None,
        charge_vnd: Decimal | None = None,
    ) -> bool:
        """Move a sent delivery to delivered, or to permanent-failure when the provider
        reports it undeliverable. Returns whether a delivery changed.

        A receipt only touches a delivery of its own provider: one on a channel the provider
        serves (``channels``) whose accepted attempt was recorded with this ``provider``, and,
        when both sides know the provider's message id, with the same one. So a
        gateway (or whoever holds its callback secret) cannot mark another channel's or
        another gateway's delivery delivered or failed. The attempt row that records the
        receipt is written only when the status changed: a repeated report adds nothing.

        ``charge_vnd``: what the provider says it charged (eSMS's TotalPrice), which
        replaces our estimate as the delivery's cost.
        """
        d = deliveries.c
        owned = sa.and_(d.channel.in_(list(channels)), d.provider == provider)
        if delivery_id is not None:
            match = sa.and_(owned, d.delivery_id == delivery_id)
            if provider_message_id is not None:
                # Our reference and the provider's id must name the same message.
                match = sa.and_(
                    match,
                    sa.or_(
                        d.provider_message_id.is_(None),
                        d.provider_message_id == provider_message_id,
                    ),
                )
        elif provider_message_id is not None:
            match = sa.and_(owned, d.provider_message_id == provider_message_id)
        else:
            return False
        now = utcnow()
        new_status = DeliveryStatus.DELIVERED if delivered else DeliveryStatus.PERMANENT_FAILURE
        values: dict[str, Any] = {
            "status": new_status.value,
            "updated_at": now,
            # Settled: a held delivery's mark no longer stands for an open question.
            "dispatch_provider": None,
            "dispatch_attempt": None,
        }
        if delivered:
            values["delivered_at"] = now
        else:
            values["last_error"] = f"provider reported not delivered: {error or 'no reason'}"
            # Refused by the provider after it took the message: no retries were used up.
            values["exhausted"] = False
        if charge_vnd is not None:
            values["cost_vnd"] = charge_vnd
            values["cost_source"] = CostSource.REPORTED.value
        with self.database.begin() as connection:
            row = connection.execute(sa.select(d.delivery_id, d.attempts).where(match)).first()
            if row is None:
                return False
            # Receipts only move deliveries forward from sent or unknown. (A receipt
            # that overtakes our own record of the send finds the delivery still
            # "sending", with no provider recorded for this attempt yet: it is not
            # applied, see
            # docs/security.md.)
            changed = connection.execute(
                sa.update(deliveries)
                .where(
                    d.delivery_id == row.delivery_id,
                    # Sent, or held as unknown: a report proves the provider had it.
                    d.status.in_([DeliveryStatus.SENT.value, DeliveryStatus.UNKNOWN.value]),
                )
                .values(**values)
            ).rowcount
            if not changed:
                return False
            connection.execute(
                delivery_attempts.insert().values(
                    delivery_id=row.delivery_id,
                    number=row.attempts,
                    provider=provider,
                    started_at=now,
                    finished_at=now,
                    outcome="receipt:" + ("delivered" if delivered else "failed"),
                    error=error,
                    error_code=error_code,
                    provider_message_id=provider_message_id,
                )
            )
            announce(connection, [row.delivery_id])
        return True


@dataclass(frozen=True)
class CoalescingKey:
    """What deliveries coalesce by: one dossier's news on one channel to one recipient."""

    agency_code: str
    dossier_code: str
    channel: str
    recipient_hash: str


def _lock_key(agency_code: str, dossier_code: str) -> int:
    """A dossier's advisory lock number (signed 64-bit, as PostgreSQL takes it)."""
    digest = hashlib.blake2b(f"{agency_code}\x1f{dossier_code}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _claimed(m: Any) -> ClaimedDelivery:
    return ClaimedDelivery(
        delivery_id=m["delivery_id"],
        event_id=m["event_id"],
        channel=m["channel"],
        recipient=m["recipient"],
        language=m["language"],
        content=m["content"],
        dossier_code=m["dossier_code"],
        agency_code=m["agency_code"],
        event_status=m["event_status"],
        attempt=m["attempts"],
        created_at=m["created_at"],
        due_at=m["due_at"],
        recipient_hash=m["recipient_hash"],
        account_hash=m["account_hash"],
        content_hash=m["content_hash"],
        counted_at=m["counted_at"],
        uncertain_provider=m["dispatch_provider"],
    )


def _finished_values(record: AttemptRecord, now: datetime) -> dict[str, Any]:
    """The delivery columns one finished attempt sets (``attempts``: one fewer)."""
    values: dict[str, Any] = {
        "status": record.status.value,
        "lease_until": None,
        "updated_at": now,
        "last_error": record.error,
        "exhausted": record.exhausted,
    }
    if record.provider is not None:
        values["provider"] = record.provider
    if record.provider_message_id is not None:
        values["provider_message_id"] = record.provider_message_id
    if record.details:
        values["details"] = record.details
    if not record.counted:
        values["attempts"] = None
    if not record.keep_mark:
        values["dispatch_provider"] = None
        values["dispatch_attempt"] = None
    if record.status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED):
        values["sent_at"] = now
    if record.status is DeliveryStatus.DELIVERED:
        values["delivered_at"] = now
    if record.charge is not None:
        values["segments"] = record.charge.segments
        values["cost_vnd"] = record.charge.cost_vnd
        values["cost_source"] = (
            None if record.charge.cost_vnd is None else record.charge.source.value
        )
    return values


def _update_finished_each(
    connection: Connection, records: Sequence[AttemptRecord], now: datetime
) -> None:
    """SQLite: updates that set the same columns go in one ``executemany``."""
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        values = _finished_values(record, now)
        updates.setdefault(tuple(sorted(values)), []).append(
            {"b_id": record.claimed.delivery_id, **{f"b_{k}": v for k, v in values.items()}}
        )
    d = deliveries.c
    for columns, rows in updates.items():
        connection.execute(
            sa.update(deliveries)
            .where(d.delivery_id == sa.bindparam("b_id"))
            .values(
                {
                    column: d.attempts - 1
                    if column == "attempts"
                    else sa.bindparam(f"b_{column}", type_=d[column].type)
                    for column in columns
                }
            ),
            [{k: v for k, v in row.items() if k != "b_attempts"} for row in rows],
        )


# PostgreSQL: one statement for any number of attempts, the rows passed as arrays
# (one cached statement, unlike a VALUES list that changes with the row count). A NULL
# keeps the delivery's value, as _finished_values leaves those columns out.
_FINISH_ALL = sa.text(
    """
    UPDATE deliveries AS d
       SET status = given.status,
           lease_until = NULL,
           updated_at = :now,
           last_error = given.error,
           exhausted = given.exhausted,
           provider = COALESCE(given.provider, d.provider),
           provider_message_id = COALESCE(given.provider_message_id, d.provider_message_id),
           details = COALESCE(CAST(given.details AS json), d.details),
           attempts = d.attempts - given.uncounted,
           dispatch_provider = CASE WHEN given.keep_mark THEN d.dispatch_provider END,
           dispatch_attempt = CASE WHEN given.keep_mark THEN d.dispatch_attempt END,
           sent_at = CASE WHEN given.sent THEN :now ELSE d.sent_at END,
           delivered_at = CASE WHEN given.delivered THEN :now ELSE d.delivered_at END,
           segments = CASE WHEN given.charged THEN given.segments ELSE d.segments END,
           cost_vnd = CASE WHEN given.charged THEN given.cost_vnd ELSE d.cost_vnd END,
           cost_source = CASE WHEN given.charged THEN given.cost_source ELSE d.cost_source END
      FROM unnest(
               CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:errors AS text[]),
               CAST(:providers AS text[]), CAST(:provider_message_ids AS text[]),
               CAST(:details AS text[]), CAST(:uncounted AS int[]), CAST(:sent AS bool[]),
               CAST(:delivered AS bool[]), CAST(:keep_mark AS bool[]),
               CAST(:exhausted AS bool[]), CAST(:charged AS bool[]),
               CAST(:segments AS int[]), CAST(:costs AS numeric[]),
               CAST(:cost_sources AS text[])
           ) AS given(id, status, error, provider, provider_message_id, details, uncounted,
                      sent, delivered, keep_mark, exhausted, charged, segments, cost_vnd,
                      cost_source)
     WHERE d.delivery_id = given.id
    """
)


def _update_finished_at_once(
    connection: Connection, records: Sequence[AttemptRecord], now: datetime
) -> None:
    connection.execute(
        _FINISH_ALL,
        {
            "now": now,
            "ids": [r.claimed.delivery_id for r in records],
            "statuses": [r.status.value for r in records],
            "errors": [r.error for r in records],
            "providers": [r.provider for r in records],
            "provider_message_ids": [r.provider_message_id for r in records],
            "details": [
                json.dumps(r.details, ensure_ascii=False) if r.details else None for r in records
            ],
            "uncounted": [0 if r.counted else 1 for r in records],
            "sent": [r.status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED) for r in records],
            "delivered": [r.status is DeliveryStatus.DELIVERED for r in records],
            "keep_mark": [r.keep_mark for r in records],
            "exhausted": [r.exhausted for r in records],
            "charged": [r.charge is not None for r in records],
            "segments": [None if r.charge is None else r.charge.segments for r in records],
            "costs": [None if r.charge is None else r.charge.cost_vnd for r in records],
            "cost_sources": [
                r.charge.source.value
                if r.charge is not None and r.charge.cost_vnd is not None
                else None
                for r in records
            ],
        },
    )


# PostgreSQL: the send-time gate's locks, one per (channel, recipient), in order (so two
# gates never deadlock), held to the end of the transaction.
_LOCK_KEYS = sa.text(
    """
    SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
      FROM (SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k) AS ordered
    """
)


# PostgreSQL: every mark of a group commit in one statement (rows as arrays).
_MARK_ALL = sa.text(
    """
    UPDATE deliveries AS d
       SET dispatch_provider = given.provider,
           dispatch_attempt = given.attempt
      FROM unnest(CAST(:ids AS uuid[]), CAST(:providers AS text[]), CAST(:attempts AS int[]))
           AS given(id, provider, attempt)
     WHERE d.delivery_id = given.id AND d.status = :sending AND d.attempts = given.attempt
    """
)
