"""Queries of the delivery log and the rejects, shared by the CLI and the HTTP API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from notifier.masking import recipient_hash
from notifier.store import Database
from notifier.store.schema import deliveries, delivery_attempts, rejected_events

MAX_PAGE = 500


@dataclass(frozen=True)
class DeliveryQuery:
    dossier_code: str | None = None
    channel: str | None = None
    status: str | None = None
    agency_code: str | None = None
    event_id: UUID | None = None
    recipient: str | None = None  # full contact: matched through its keyed hash
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class DeliveryRow:
    delivery_id: UUID
    event_id: UUID
    created_at: datetime
    dossier_code: str
    agency_code: str
    event_status: str
    channel: str
    provider: str | None
    recipient: str  # masked
    template: str
    status: str
    attempts: int
    provider_message_id: str | None
    last_error: str | None
    sent_at: datetime | None
    delivered_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            key: value.isoformat()
            if isinstance(value, datetime)
            else str(value)
            if isinstance(value, UUID)
            else value
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class AttemptRow:
    number: int
    provider: str | None
    started_at: datetime
    finished_at: datetime
    outcome: str
    error: str | None
    error_code: str | None
    provider_message_id: str | None


@dataclass(frozen=True)
class RejectRow:
    reject_id: UUID
    received_at: datetime
    source: str
    reason: str
    event_id: str | None
    payload_bytes: int
    replayed_at: datetime | None


class DeliveryLog:
    def __init__(self, database: Database, hash_key: str) -> None:
        self.database = database
        self.hash_key = hash_key

    def search(self, query: DeliveryQuery) -> list[DeliveryRow]:
        d = deliveries.c
        statement = sa.select(
            d.delivery_id,
            d.event_id,
            d.created_at,
            d.dossier_code,
            d.agency_code,
            d.event_status,
            d.channel,
            d.provider,
            d.recipient_masked.label("recipient"),
            d.template,
            d.status,
            d.attempts,
            d.provider_message_id,
            d.last_error,
            d.sent_at,
            d.delivered_at,
        )
        filters = {
            d.dossier_code: query.dossier_code,
            d.channel: query.channel,
            d.status: query.status,
            d.agency_code: query.agency_code,
            d.event_id: query.event_id,
        }
        for column, value in filters.items():
            if value is not None:
                statement = statement.where(column == value)
        if query.recipient is not None:
            statement = statement.where(
                d.recipient_hash == recipient_hash(query.recipient, self.hash_key)
            )
        if query.since is not None:
            statement = statement.where(d.created_at >= query.since)
        if query.until is not None:
            statement = statement.where(d.created_at < query.until)
        statement = (
            statement.order_by(d.created_at.desc(), d.delivery_id)
            .limit(min(query.limit, MAX_PAGE))
            .offset(query.offset)
        )
        with self.database.engine.connect() as connection:
            return [DeliveryRow(**row._mapping) for row in connection.execute(statement)]

    def attempts(self, delivery_id: UUID) -> list[AttemptRow]:
        a = delivery_attempts.c
        statement = (
            sa.select(
                a.number,
                a.provider,
                a.started_at,
                a.finished_at,
                a.outcome,
                a.error,
                a.error_code,
                a.provider_message_id,
            )
            .where(a.delivery_id == delivery_id)
            .order_by(a.attempt_id)
        )
        with self.database.engine.connect() as connection:
            return [AttemptRow(**row._mapping) for row in connection.execute(statement)]

    def rejects(
        self, *, limit: int = 50, offset: int = 0, since: datetime | None = None
    ) -> list[RejectRow]:
        r = rejected_events.c
        statement = sa.select(
            r.reject_id,
            r.received_at,
            r.source,
            r.reason,
            r.event_id,
            r.payload_bytes,
            r.replayed_at,
        )
        if since is not None:
            statement = statement.where(r.received_at >= since)
        statement = (
            statement.order_by(r.received_at.desc()).limit(min(limit, MAX_PAGE)).offset(offset)
        )
        with self.database.engine.connect() as connection:
            return [RejectRow(**row._mapping) for row in connection.execute(statement)]

    def status_counts(self) -> dict[str, int]:
        statement = sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)
        with self.database.engine.connect() as connection:
            return {status: int(count) for status, count in connection.execute(statement)}
