"""Citizens' inbound messages: stored masked, rate-counted per sender, answered by a
reply that is an ordinary delivery, all in one transaction.

A message and its reply are written together: the ``inbound_messages`` row, the
sender's rate-limit window, and (when there is one) the reply's ``events`` row (same
id as the message, status ``reply``, no payload) and ``deliveries`` row. A crash
leaves all or nothing; the sweeper re-enqueues a reply whose queue message was lost.

A provider's message id is unique per provider: a replayed or retried call with the
same id inserts nothing and is answered as a duplicate, never replied to twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from notifier.adapter import REPLY_STATUS
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.schema import deliveries, events, inbound_messages, inbound_senders, utcnow


class InboundOutcome(StrEnum):
    """What came of one inbound message."""

    ANSWERED = "answered"  # a reply was planned (status, help, stop/start confirmation...)
    RATE_LIMITED = "rate-limited"  # the one "too many messages" reply of the window
    SILENCED = "silenced"  # over the sender's limit: stored and counted, not answered
    IGNORED = "ignored"  # a sender no reply can reach (not a mobile number)


@dataclass(frozen=True)
class InboundRow:
    """One message as stored: masked sender and text, what it asked."""

    channel: str
    provider: str
    provider_message_id: str | None
    sender_masked: str
    sender_hash: str
    text_masked: str
    command: str
    received_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True)
class ReplyDraft:
    """A rendered reply, recorded as a queued delivery on the message's channel."""

    channel: str
    recipient: str
    recipient_masked: str
    recipient_hash: str
    language: str
    template: str
    content: dict[str, str]
    dossier_code: str = ""
    agency_code: str = ""


@dataclass(frozen=True)
class Decision:
    outcome: InboundOutcome
    reply: ReplyDraft | None
    dossier_code: str | None = None


@dataclass(frozen=True)
class Recorded:
    inbound_id: UUID
    outcome: InboundOutcome
    # (delivery id, channel) of the reply to enqueue, if any.
    reply: tuple[UUID, str] | None


@dataclass(frozen=True)
class DossierRow:
    """A dossier's latest known state, for answering its status."""

    dossier_code: str
    agency_code: str
    status: str
    payload: dict[str, Any] | None
    # Recipient hashes of every delivery made for the dossier's events: the contacts
    # its applicant gave.
    contact_hashes: frozenset[str]


@dataclass(frozen=True)
class InboundListItem:
    inbound_id: UUID
    received_at: datetime
    channel: str
    provider: str
    sender_masked: str
    text_masked: str | None
    command: str
    outcome: str
    dossier_code: str | None
    reply_delivery_id: UUID | None


_m = inbound_messages.c


class InboundStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def dossier(self, codes: Collection[str]) -> DossierRow | None:
        """The latest status event of the dossier written as one of ``codes`` (the
        citizen's spelling and its upper case), or None."""
        e = events.c
        query = (
            sa.select(e.event_id, e.dossier_code, e.agency_code, e.status, e.payload)
            .where(e.dossier_code.in_(set(codes)), e.status != REPLY_STATUS)
            .order_by(e.occurred_at.desc(), e.received_at.desc())
            .limit(1)
        )
        with self.database.engine.connect() as connection:
            row = connection.execute(query).first()
            if row is None:
                return None
            d = deliveries.c
            hashes = connection.execute(
                sa.select(d.recipient_hash)
                .where(d.dossier_code == row.dossier_code, d.event_status != REPLY_STATUS)
                .distinct()
            ).scalars()
            contact_hashes = frozenset(hashes)
        payload = row.payload if isinstance(row.payload, dict) else None
        return DossierRow(row.dossier_code, row.agency_code, row.status, payload, contact_hashes)

    def record(
        self,
        row: InboundRow,
        decide: Callable[[int], Decision],
        *,
        window: timedelta,
    ) -> Recorded | None:
        """Store one message and its reply in one transaction; None when the provider's
        message id was seen before (a repeat: nothing stored, nothing answered).

        ``decide`` is called inside the transaction with the message's number in its
        sender's rate-limit window (1 for the first), and says what to answer.
        """
        inbound_id = uuid.uuid4()
        now = utcnow()
        with self.database.begin() as connection:
            inserted = connection.execute(
                self.database.insert_ignore(inbound_messages, "provider", "provider_message_id")
                .values(
                    inbound_id=inbound_id,
                    received_at=row.received_at,
                    sent_at=row.sent_at,
                    channel=row.channel,
                    provider=row.provider,
                    provider_message_id=row.provider_message_id,
                    sender_masked=row.sender_masked[:128],
                    sender_hash=row.sender_hash,
                    text_masked=row.text_masked,
                    command=row.command,
                    outcome=InboundOutcome.IGNORED.value,
                )
                .returning(_m.inbound_id)
            ).first()
            if inserted is None:
                return None
            number = self._count(connection, row.sender_hash, now, window)
            decision = decide(number)
            reply = None
            if decision.reply is not None:
                reply = (
                    self._insert_reply(connection, inbound_id, row, decision.reply, now),
                    decision.reply.channel,
                )
            connection.execute(
                sa.update(inbound_messages)
                .where(_m.inbound_id == inbound_id)
                .values(
                    outcome=decision.outcome.value,
                    dossier_code=decision.dossier_code,
                    reply_delivery_id=None if reply is None else reply[0],
                )
            )
        return Recorded(inbound_id, decision.outcome, reply)

    def _count(
        self, connection: Connection, sender_hash: str, now: datetime, window: timedelta
    ) -> int:
        """This message's number in its sender's window. The UPDATE holds the sender's
        row until commit, so concurrent messages from one sender count one by one."""
        s = inbound_senders.c
        connection.execute(
            self.database.insert_ignore(inbound_senders, "sender_hash").values(
                sender_hash=sender_hash, window_started_at=now, messages=0
            )
        )
        expired = s.window_started_at <= now - window
        number = connection.execute(
            sa.update(inbound_senders)
            .where(s.sender_hash == sender_hash)
            .values(
                messages=sa.case((expired, 1), else_=s.messages + 1),
                window_started_at=sa.case((expired, now), else_=s.window_started_at),
            )
            .returning(s.messages)
        ).scalar_one()
        return int(number)

    def _insert_reply(
        self,
        connection: Connection,
        inbound_id: UUID,
        row: InboundRow,
        reply: ReplyDraft,
        now: datetime,
    ) -> UUID:
        delivery_id = uuid.uuid4()
        connection.execute(
            sa.insert(events).values(
                event_id=inbound_id,
                received_at=now,
                occurred_at=row.sent_at or row.received_at,
                source_system=f"inbound:{row.provider}"[:64],
                agency_code=reply.agency_code,
                dossier_code=reply.dossier_code,
                procedure_code="",
                status=REPLY_STATUS,
                payload=sa.null(),  # SQL NULL: a reply carries no event payload
            )
        )
        connection.execute(
            sa.insert(deliveries).values(
                delivery_id=delivery_id,
                event_id=inbound_id,
                dossier_code=reply.dossier_code,
                agency_code=reply.agency_code,
                procedure_code="",
                event_status=REPLY_STATUS,
                channel=reply.channel,
                language=reply.language,
                template=reply.template,
                recipient_masked=reply.recipient_masked,
                recipient_hash=reply.recipient_hash,
                recipient=reply.recipient,
                content=reply.content,
                status=DeliveryStatus.QUEUED.value,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
        )
        return delivery_id

    # -- what operators see --------------------------------------------------------------

    def recent(
        self, *, limit: int = 100, outcome: str | None = None, command: str | None = None
    ) -> list[InboundListItem]:
        query = sa.select(
            _m.inbound_id,
            _m.received_at,
            _m.channel,
            _m.provider,
            _m.sender_masked,
            _m.text_masked,
            _m.command,
            _m.outcome,
            _m.dossier_code,
            _m.reply_delivery_id,
        ).order_by(_m.received_at.desc())
        if outcome is not None:
            query = query.where(_m.outcome == outcome)
        if command is not None:
            query = query.where(_m.command == command)
        with self.database.engine.connect() as connection:
            rows = connection.execute(query.limit(limit)).all()
        return [InboundListItem(**row._mapping) for row in rows]

    def counts(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> dict[tuple[str, str, str], int]:
        """Messages by (channel, command, outcome), received in [since, until)."""
        query = sa.select(_m.channel, _m.command, _m.outcome, sa.func.count()).group_by(
            _m.channel, _m.command, _m.outcome
        )
        if since is not None:
            query = query.where(_m.received_at >= since)
        if until is not None:
            query = query.where(_m.received_at < until)
        with self.database.engine.connect() as connection:
            return {(c, k, o): int(n) for c, k, o, n in connection.execute(query)}
