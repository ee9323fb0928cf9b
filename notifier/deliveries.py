"""The delivery log: planned deliveries, their status lifecycle and every attempt.

Lifecycle (after GOV.UK Notify)::

    queued ──claim──► sending ──► sent ──receipt──► delivered
       ▲                 │   └──► permanent-failure     (never retried)
       └── retry ── temporary-failure ◄┘                 (retried with backoff)
    suppressed: planned but not sent (opt-out, quiet rules)

A delivery is claimed with a lease before a send, so two workers holding copies of
the same message never both send; a worker that dies mid-send leaves a lease that
expires, and the message the broker redelivers claims it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from notifier.store import Database
from notifier.store.schema import deliveries, delivery_attempts, receipt_nonces, utcnow


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    TEMPORARY_FAILURE = "temporary-failure"
    PERMANENT_FAILURE = "permanent-failure"
    SUPPRESSED = "suppressed"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = {
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.PERMANENT_FAILURE,
    DeliveryStatus.SUPPRESSED,
}
_CLAIMABLE = (DeliveryStatus.QUEUED, DeliveryStatus.TEMPORARY_FAILURE)


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


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    FINISHED = "finished"  # already in a final state: nothing to do
    BUSY = "busy"  # another worker holds an unexpired lease
    MISSING = "missing"


_d = deliveries.c
_CLAIM = (
    sa.update(deliveries)
    .where(
        _d.delivery_id == sa.bindparam("id"),
        sa.or_(
            _d.status.in_([s.value for s in _CLAIMABLE]),
            # A worker that died mid-send: its lease has run out.
            sa.and_(
                _d.status == DeliveryStatus.SENDING.value, _d.lease_until < sa.bindparam("now")
            ),
        ),
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
    )
)
_STATUS_OF = sa.select(_d.status).where(_d.delivery_id == sa.bindparam("id"))


class DeliveryStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def insert_planned(
        self,
        connection: Connection,
        event: Any,
        planned: Sequence[PlannedDelivery],
        *,
        fallback_of: UUID | None = None,
        ignore_existing: bool = False,
    ) -> None:
        """Record planned deliveries in the caller's transaction (with the event row).

        ``ignore_existing`` skips deliveries whose key (event, channel, recipient) exists.
        """
        if not planned:
            return
        now = utcnow()
        statement = (
            self.database.insert_ignore(deliveries, "event_id", "channel", "recipient_hash")
            if ignore_existing
            else deliveries.insert()
        )
        connection.execute(
            statement,
            [
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
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "fallback_of": fallback_of,
                }
                for p in planned
            ],
        )

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

    def unfinished_for_event(self, event_id: UUID) -> list[tuple[UUID, str]]:
        """Deliveries of an event still waiting to be sent (for re-enqueueing)."""
        query = sa.select(deliveries.c.delivery_id, deliveries.c.channel).where(
            deliveries.c.event_id == event_id,
            deliveries.c.status.in_([s.value for s in _CLAIMABLE]),
        )
        with self.database.engine.connect() as connection:
            return [(row.delivery_id, row.channel) for row in connection.execute(query)]

    def claim(
        self, delivery_id: UUID, lease: timedelta
    ) -> tuple[ClaimOutcome, ClaimedDelivery | None]:
        """Atomically move a delivery to ``sending`` under a lease, if nobody else has it.

        One ``UPDATE ... RETURNING`` in the common case; the status is read only when
        nothing was claimed, to say why."""
        now = utcnow()
        with self.database.begin() as connection:
            row = connection.execute(
                _CLAIM, {"id": delivery_id, "now": now, "lease_until": now + lease}
            ).first()
            status = (
                None
                if row is not None
                else connection.execute(_STATUS_OF, {"id": delivery_id}).scalar()
            )
        if row is None:
            if status is None:
                return ClaimOutcome.MISSING, None
            if DeliveryStatus(status).final:
                return ClaimOutcome.FINISHED, None
            return ClaimOutcome.BUSY, None
        m = row._mapping
        return ClaimOutcome.CLAIMED, ClaimedDelivery(
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
        )

    def release(self, claimed: ClaimedDelivery, reason: str) -> None:
        """Give a claim back without counting it as an attempt (no provider was called)."""
        with self.database.begin() as connection:
            connection.execute(
                sa.update(deliveries)
                .where(
                    deliveries.c.delivery_id == claimed.delivery_id,
                    deliveries.c.status == DeliveryStatus.SENDING.value,
                )
                .values(
                    status=DeliveryStatus.QUEUED.value
                    if claimed.attempt == 1
                    else DeliveryStatus.TEMPORARY_FAILURE.value,
                    attempts=deliveries.c.attempts - 1,
                    lease_until=None,
                    last_error=reason,
                    updated_at=utcnow(),
                )
            )

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

    def finish_attempt(
        self,
        claimed: ClaimedDelivery,
        *,
        status: DeliveryStatus,
        provider: str | None,
        started_at: datetime,
        error: str | None = None,
        error_code: str | None = None,
        provider_message_id: str | None = None,
        details: dict[str, Any] | None = None,
        counted: bool = True,
    ) -> None:
        """Record one attempt and the delivery's new status in one transaction.

        ``counted=False`` keeps the attempt out of the delivery's count (a provider that
        asked us to come back at a set time, e.g. after its night-time quiet hours)."""
        now = utcnow()
        values: dict[str, Any] = {
            "status": status.value,
            "lease_until": None,
            "updated_at": now,
            "last_error": error,
        }
        if provider is not None:
            values["provider"] = provider
        if provider_message_id is not None:
            values["provider_message_id"] = provider_message_id
        if details:
            values["details"] = details
        if not counted:
            values["attempts"] = deliveries.c.attempts - 1
        if status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED):
            values["sent_at"] = now
        if status is DeliveryStatus.DELIVERED:
            values["delivered_at"] = now
        with self.database.begin() as connection:
            connection.execute(
                sa.update(deliveries)
                .where(deliveries.c.delivery_id == claimed.delivery_id)
                .values(**values)
            )
            connection.execute(
                delivery_attempts.insert().values(
                    delivery_id=claimed.delivery_id,
                    number=claimed.attempt,
                    provider=provider,
                    started_at=started_at,
                    finished_at=now,
                    outcome=status.value,
                    error=error,
                    error_code=error_code,
                    provider_message_id=provider_message_id,
                )
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
        delivered: bool,
        delivery_id: UUID | None,
        provider_message_id: str | None,
        error: str | None,
        error_code: str | None,
    ) -> bool:
        """Move a sent delivery to delivered, or to permanent-failure when the provider
        reports it undeliverable. Returns whether a delivery matched."""
        d = deliveries.c
        if delivery_id is not None:
            match = d.delivery_id == delivery_id
        elif provider_message_id is not None:
            match = sa.and_(d.provider == provider, d.provider_message_id == provider_message_id)
        else:
            return False
        now = utcnow()
        new_status = DeliveryStatus.DELIVERED if delivered else DeliveryStatus.PERMANENT_FAILURE
        values: dict[str, Any] = {"status": new_status.value, "updated_at": now}
        if delivered:
            values["delivered_at"] = now
        else:
            values["last_error"] = f"provider reported not delivered: {error or 'no reason'}"
        with self.database.begin() as connection:
            row = connection.execute(sa.select(d.delivery_id, d.attempts).where(match)).first()
            if row is None:
                return False
            # Receipts only move deliveries forward from sent (or sending, when the
            # receipt overtakes our own record of the send).
            connection.execute(
                sa.update(deliveries)
                .where(
                    d.delivery_id == row.delivery_id,
                    d.status.in_([DeliveryStatus.SENT.value, DeliveryStatus.SENDING.value]),
                )
                .values(**values)
            )
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
        return True
