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
from notifier.store.schema import deliveries, delivery_attempts, utcnow


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


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    FINISHED = "finished"  # already in a final state: nothing to do
    BUSY = "busy"  # another worker holds an unexpired lease
    MISSING = "missing"


class DeliveryStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def insert_planned(
        self, connection: Connection, event: Any, planned: Sequence[PlannedDelivery]
    ) -> None:
        """Record planned deliveries in the caller's transaction (with the event row)."""
        if not planned:
            return
        now = utcnow()
        connection.execute(
            deliveries.insert(),
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
                }
                for p in planned
            ],
        )

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
        """Atomically move a delivery to ``sending`` under a lease, if nobody else has it."""
        now = utcnow()
        claimable = sa.or_(
            deliveries.c.status.in_([s.value for s in _CLAIMABLE]),
            sa.and_(
                deliveries.c.status == DeliveryStatus.SENDING.value,
                deliveries.c.lease_until < now,
            ),
        )
        with self.database.begin() as connection:
            updated = connection.execute(
                sa.update(deliveries)
                .where(deliveries.c.delivery_id == delivery_id, claimable)
                .values(
                    status=DeliveryStatus.SENDING.value,
                    attempts=deliveries.c.attempts + 1,
                    lease_until=now + lease,
                    updated_at=now,
                )
            ).rowcount
            row = connection.execute(
                sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)
            ).first()
        if row is None:
            return ClaimOutcome.MISSING, None
        m = row._mapping
        if not updated:
            if DeliveryStatus(m["status"]).final:
                return ClaimOutcome.FINISHED, None
            return ClaimOutcome.BUSY, None
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
        )

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
    ) -> None:
        """Record one attempt and the delivery's new status in one transaction."""
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
