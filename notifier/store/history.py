"""What a publisher may learn of its own events: an event's outcome and deliveries, a
dossier's history, and its rejects (the status API, ``notifier.web.statuses``).

A :class:`Reader` (an API key's agencies and id) sees an event, and its deliveries,
when the event's agency is one of its agencies (``*``: all). It sees a reject when the
reject belongs to one of its agencies (the agency could be read from the event and its
submitter may publish for it, see ``notifier.pipeline.ingest``) or when it submitted
the reject itself, so it can fix and resend its own bad events. What it may not see is
reported exactly as what does not exist (the API's 404).

Everything here is kept for the delivery log's retention and beyond: the purge clears
contacts, message bodies and payloads, never these rows; recipients are masked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa

from notifier.store.database import Database
from notifier.store.publishers import EVERY_AGENCY, SubmitterKind
from notifier.store.schema import deliveries, events, rejected_events

# A dossier's history is bounded (its newest events and rejects), so one request
# cannot read an unbounded amount.
MAX_DOSSIER_EVENTS = 500


@dataclass(frozen=True)
class Reader:
    """Who asks: an API key's id and the agencies it may publish for."""

    client_id: str
    agencies: tuple[str, ...]

    def sees_agency(self, agency: str | None) -> bool:
        return agency is not None and (EVERY_AGENCY in self.agencies or agency in self.agencies)

    def agency_condition(self, column: sa.ColumnElement[str | None]) -> sa.ColumnElement[bool]:
        if EVERY_AGENCY in self.agencies:
            return column.is_not(None)
        return column.in_(list(self.agencies))

    def reject_condition(self) -> sa.ColumnElement[bool]:
        r = rejected_events.c
        return sa.or_(
            self.agency_condition(r.agency_code),
            sa.and_(
                r.submitter_kind == SubmitterKind.API_KEY.value,
                r.submitter_id == self.client_id,
            ),
        )


@dataclass(frozen=True)
class DeliveryRecord:
    delivery_id: UUID
    channel: str
    provider: str | None
    status: str
    attempts: int
    recipient: str  # masked
    fallback_of: UUID | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class RejectRecord:
    event_id: str | None
    agency_code: str | None
    dossier_code: str | None
    received_at: datetime
    reason: str
    source: str


@dataclass(frozen=True)
class EventRecord:
    event_id: UUID
    agency_code: str
    dossier_code: str
    procedure_code: str
    status: str  # the dossier status the event reported
    occurred_at: datetime
    received_at: datetime
    duplicates: int
    deliveries: list[DeliveryRecord] = field(default_factory=list)


@dataclass(frozen=True)
class EventHistory:
    """One event id: the event if it was accepted, and every reject under that id."""

    event: EventRecord | None
    rejects: list[RejectRecord]


@dataclass(frozen=True)
class DossierHistory:
    events: list[EventRecord]
    rejects: list[RejectRecord]


_d, _e, _r = deliveries.c, events.c, rejected_events.c
_EVENT_COLUMNS = (
    _e.event_id,
    _e.agency_code,
    _e.dossier_code,
    _e.procedure_code,
    _e.status,
    _e.occurred_at,
    _e.received_at,
    _e.duplicates,
)
_DELIVERY_COLUMNS = (
    _d.event_id,
    _d.delivery_id,
    _d.channel,
    _d.provider,
    _d.status,
    _d.attempts,
    _d.recipient_masked,
    _d.fallback_of,
    _d.created_at,
    _d.updated_at,
    _d.sent_at,
    _d.delivered_at,
)
_REJECT_COLUMNS = (
    _r.event_id,
    _r.agency_code,
    _r.dossier_code,
    _r.received_at,
    _r.reason,
    _r.source,
)


class History:
    def __init__(self, database: Database) -> None:
        self.database = database

    def event(self, event_id: str, reader: Reader) -> EventHistory | None:
        """The event ``event_id`` as ``reader`` may see it; None if it sees nothing."""
        try:
            as_uuid: UUID | None = uuid.UUID(event_id)
        except ValueError:
            as_uuid = None  # only a reject can carry an id that is not a UUID
        # Rejects store the id as received; an accepted event's canonical form too.
        ids = {event_id} | ({str(as_uuid)} if as_uuid is not None else set())
        with self.database.engine.connect() as connection:
            events_found = (
                self._events(connection, _e.event_id == as_uuid, reader)
                if as_uuid is not None
                else []
            )
            rejects = self._rejects(connection, _r.event_id.in_(sorted(ids)), reader)
        if not events_found and not rejects:
            return None
        return EventHistory(events_found[0] if events_found else None, rejects)

    def dossier(self, dossier_code: str, reader: Reader) -> DossierHistory | None:
        """Every event and reject of the dossier ``reader`` may see, oldest first;
        None if it sees none."""
        with self.database.engine.connect() as connection:
            found = self._events(connection, _e.dossier_code == dossier_code, reader)
            rejects = self._rejects(connection, _r.dossier_code == dossier_code, reader)
        if not found and not rejects:
            return None
        return DossierHistory(found, rejects)

    def _events(
        self, connection: sa.Connection, condition: sa.ColumnElement[bool], reader: Reader
    ) -> list[EventRecord]:
        rows = connection.execute(
            sa.select(*_EVENT_COLUMNS)
            .where(condition, reader.agency_condition(_e.agency_code))
            .order_by(_e.occurred_at.desc(), _e.received_at.desc())
            .limit(MAX_DOSSIER_EVENTS)
        ).all()
        if not rows:
            return []
        per_event: dict[UUID, list[DeliveryRecord]] = {row.event_id: [] for row in rows}
        for d in connection.execute(
            sa.select(*_DELIVERY_COLUMNS)
            .where(_d.event_id.in_(list(per_event)))
            .order_by(_d.created_at, _d.delivery_id)
        ):
            per_event[d.event_id].append(
                DeliveryRecord(
                    d.delivery_id,
                    d.channel,
                    d.provider,
                    d.status,
                    d.attempts,
                    d.recipient_masked,
                    d.fallback_of,
                    d.created_at,
                    d.updated_at,
                    d.sent_at,
                    d.delivered_at,
                )
            )
        return [
            EventRecord(
                row.event_id,
                row.agency_code,
                row.dossier_code,
                row.procedure_code,
                row.status,
                row.occurred_at,
                row.received_at,
                row.duplicates,
                per_event[row.event_id],
            )
            for row in reversed(rows)
        ]

    def _rejects(
        self, connection: sa.Connection, condition: sa.ColumnElement[bool], reader: Reader
    ) -> list[RejectRecord]:
        rows = connection.execute(
            sa.select(*_REJECT_COLUMNS)
            .where(condition, reader.reject_condition())
            .order_by(_r.received_at.desc())
            .limit(MAX_DOSSIER_EVENTS)
        ).all()
        return [
            RejectRecord(
                row.event_id,
                row.agency_code,
                row.dossier_code,
                row.received_at,
                row.reason,
                row.source,
            )
            for row in reversed(rows)
        ]
