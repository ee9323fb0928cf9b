"""The record of status changes: an outbox row per change, in the change's transaction.

Every announced change is written here by the store function that makes it, in the
same transaction: an event accepted, received again (duplicate) or rejected at ingest
(:func:`record_event_changes`), and a delivery reaching an announced status
(:func:`record_delivery_changes`, called by the transitions in
:mod:`notifier.store.deliveries.lifecycle`, whose ``ANNOUNCED`` set says which
statuses are announced). So a change that rolls back leaves no row, and a change that
commits always has one.

The relay (:mod:`notifier.pipeline.relay`) publishes pending rows to the status stream
(RabbitMQ topic exchange ``notifier.statuses``) and marks them published after the
broker's confirm (:meth:`StatusOutbox.publish_pending`): at least once, the row's
``change_id`` being the message id receivers dedupe on. Retention prunes published
rows once the metric counters have folded them (:meth:`StatusOutbox.prune`,
:mod:`notifier.store.counters`). The message format is
``schemas/status-message.v1.schema.json`` (docs/events.md, "Learning what happened").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from notifier.store.database import Database
from notifier.store.notify import STATUSES, notify
from notifier.store.schema import deliveries, status_outbox, utcnow

SCHEMA = "notifier.status.v1"
# The routing key's first word when no agency can be named (a reject whose agency could
# not be read, or was outside its submitter's scope). No agency code starts with "~".
NO_AGENCY = "~none"


class EventChange(StrEnum):
    ACCEPTED = "event.accepted"
    DUPLICATE = "event.duplicate"
    REJECTED = "event.rejected"


def delivery_type(status: str) -> str:
    """The message type of a delivery reaching ``status``: ``delivery.<status>``."""
    return f"delivery.{status}"


def agency_word(agency: str | None) -> str:
    """An agency code as one word of a routing key: its dots (which split topic words)
    become ``~``, which no agency code contains, so two codes never share a word."""
    return NO_AGENCY if agency is None else agency.replace(".", "~")


def routing_key(agency: str | None, change_type: str) -> str:
    """``<agency word>.<type>``, e.g. ``000~00~12~H29.delivery.delivered``: a TTHC
    system's queue is bound with ``<agency word>.#`` for each of its agencies."""
    return f"{agency_word(agency)}.{change_type}"


def binding_key(agency: str) -> str:
    """The binding of a queue to ``agency``'s statuses (``*``: every agency)."""
    return "#" if agency == "*" else f"{agency_word(agency)}.#"


def timestamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class EventStatusChange:
    """An event accepted, received again, or rejected (``event_id`` as received)."""

    type: EventChange
    agency: str | None
    event_id: str | None
    dossier_code: str | None
    occurred_at: datetime
    reason: str | None = None


def record_event_changes(connection: Connection, changes: Sequence[EventStatusChange]) -> None:
    """Write the outbox rows of event changes, in the caller's transaction."""
    _insert(
        connection,
        [
            _row(
                c.type.value,
                c.agency,
                c.occurred_at,
                event_id=c.event_id,
                dossier_code=c.dossier_code,
                rejection=None if c.reason is None else {"reason": c.reason},
            )
            for c in changes
        ],
    )


_d = deliveries.c
_DELIVERY_COLUMNS = (
    _d.delivery_id,
    _d.event_id,
    _d.agency_code,
    _d.dossier_code,
    _d.channel,
    _d.provider,
    _d.status,
    _d.attempts,
    _d.recipient_masked,
    _d.fallback_of,
    _d.created_at,
    _d.updated_at,
)


def record_delivery_changes(
    connection: Connection,
    delivery_ids: Collection[UUID],
    announced: Collection[str],
    *,
    send_outcome: bool = False,
) -> int:
    """Write an outbox row for each of these deliveries whose status (as the caller's
    transaction has just set it) is in ``announced``; returns how many.

    Called by the delivery transitions right after their update, so the row shows the
    delivery as that change left it. ``send_outcome``: the change ends a send (the
    metric counters then count its retries and latency, notifier.store.counters)."""
    if not delivery_ids:
        return 0
    if connection.dialect.name == "postgresql":
        # One statement builds, writes and notifies the rows in the database: reading
        # the deliveries back and building each body in Python cost as much as the
        # recording transaction itself in a busy worker.
        written = connection.execute(
            _RECORD_ALL,
            {
                "ids": list(delivery_ids),
                "announced": list(announced),
                "schema": SCHEMA,
                "channel": STATUSES,
                "send_outcome": send_outcome,
            },
        ).one()[0]
        return int(written)
    rows = connection.execute(
        sa.select(*_DELIVERY_COLUMNS).where(
            _d.delivery_id.in_(list(delivery_ids)), _d.status.in_(list(announced))
        )
    ).all()
    _insert(
        connection,
        [
            _row(
                delivery_type(row.status),
                row.agency_code,
                row.updated_at,
                event_id=str(row.event_id),
                dossier_code=row.dossier_code,
                delivery={
                    "id": str(row.delivery_id),
                    "channel": row.channel,
                    "provider": row.provider,
                    "status": row.status,
                    "attempts": row.attempts,
                    "recipient": row.recipient_masked,
                    "fallback_of": None if row.fallback_of is None else str(row.fallback_of),
                    "created_at": timestamp(row.created_at),
                    "updated_at": timestamp(row.updated_at),
                },
                send_outcome=send_outcome,
            )
            for row in rows
        ],
    )
    return len(rows)


# PostgreSQL: the outbox rows of a group of deliveries, the same as :func:`_row` builds
# (timestamps always with microseconds, in UTC, "Z"), and one NOTIFY when any was written.
_RECORD_ALL = sa.text(
    """
    WITH written AS (
        INSERT INTO status_outbox (change_id, type, agency_code, occurred_at, send_outcome,
                                   body)
        SELECT gen_random_uuid(), 'delivery.' || d.status, d.agency_code, d.updated_at,
               CAST(:send_outcome AS boolean),
               json_build_object(
                   'schema', CAST(:schema AS text),
                   'type', 'delivery.' || d.status,
                   'occurred_at', to_char(d.updated_at AT TIME ZONE 'UTC',
                           'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'agency', d.agency_code,
                   'event_id', CAST(d.event_id AS text),
                   'dossier_code', d.dossier_code,
                   'delivery', json_build_object(
                       'id', CAST(d.delivery_id AS text),
                       'channel', d.channel,
                       'provider', d.provider,
                       'status', d.status,
                       'attempts', d.attempts,
                       'recipient', d.recipient_masked,
                       'fallback_of', CAST(d.fallback_of AS text),
                       'created_at', to_char(d.created_at AT TIME ZONE 'UTC',
                               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                       'updated_at', to_char(d.updated_at AT TIME ZONE 'UTC',
                               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                   ),
                   'rejection', NULL
               )
          FROM deliveries AS d
         WHERE d.delivery_id = ANY(CAST(:ids AS uuid[]))
           AND d.status = ANY(CAST(:announced AS text[]))
         ORDER BY d.delivery_id
        RETURNING 1
    ), notified AS (
        SELECT pg_notify(CAST(:channel AS text), '') FROM (SELECT 1) AS once
         WHERE EXISTS (SELECT 1 FROM written)
    )
    SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM notified)
    """
)


def _row(
    change_type: str,
    agency: str | None,
    occurred_at: datetime,
    *,
    event_id: str | None,
    dossier_code: str | None,
    delivery: dict[str, Any] | None = None,
    rejection: dict[str, str] | None = None,
    send_outcome: bool = False,
) -> dict[str, Any]:
    # ``id`` and ``sequence`` are the row's own columns, added when it is published.
    return {
        "change_id": uuid.uuid4(),
        "type": change_type,
        "agency_code": agency,
        "occurred_at": occurred_at,
        "send_outcome": send_outcome,
        "body": {
            "schema": SCHEMA,
            "type": change_type,
            "occurred_at": timestamp(occurred_at),
            "agency": agency,
            "event_id": event_id,
            "dossier_code": dossier_code,
            "delivery": delivery,
            "rejection": rejection,
        },
    }


def _insert(connection: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        connection.execute(status_outbox.insert(), rows)
        notify(connection, STATUSES)


@dataclass(frozen=True)
class PendingStatus:
    """An outbox row still to publish."""

    sequence: int
    change_id: UUID
    type: str
    agency: str | None
    body: dict[str, Any]

    @property
    def routing_key(self) -> str:
        return routing_key(self.agency, self.type)

    def message(self) -> dict[str, Any]:
        """The status message (schema ``notifier.status.v1``)."""
        return {**self.body, "id": str(self.change_id), "sequence": self.sequence}


class StatusOutbox:
    """The relay's and retention's side of the outbox."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def publish_pending(
        self,
        publish: Callable[[list[PendingStatus]], None],
        batch: int,
        *,
        fold: Callable[[Connection, Sequence[Any]], None] | None = None,
    ) -> int:
        """Publish up to ``batch`` pending rows, oldest first, and mark them published
        once ``publish`` returns (it returns only when the broker confirmed them all, and
        raises otherwise: the rows stay pending). Returns how many were published.

        PostgreSQL: the rows are claimed ``FOR UPDATE SKIP LOCKED`` in a transaction held
        across the publish, so relays in several workers take disjoint rows; a relay
        killed after the publish leaves them unmarked, and they are published again
        (same ``id``). ``fold`` (PostgreSQL only) is given, in that transaction, the rows
        not folded into the metric counters yet (with ``type``, ``body`` and
        ``send_outcome``), and the mark sets them folded: one write of each row instead of
        a second one by the folder. SQLite (one process, the embedded demo): read,
        publish, then mark; the folder folds them."""
        o = status_outbox.c
        query = (
            sa.select(
                o.sequence, o.change_id, o.type, o.agency_code, o.body, o.folded, o.send_outcome
            )
            .where(o.published_at.is_(None))
            .order_by(o.sequence)
            .limit(batch)
        )
        if self.database.is_sqlite:
            with self.database.engine.connect() as connection:
                pending = [_pending(row) for row in connection.execute(query)]
            if pending:
                publish(pending)
                with self.database.begin() as connection:
                    self._mark(connection, pending, folded=False)
            return len(pending)
        with self.database.begin() as connection:
            rows = connection.execute(query.with_for_update(skip_locked=True)).all()
            pending = [_pending(row) for row in rows]
            if pending:
                publish(pending)
                self._mark(connection, pending, folded=fold is not None)
                if fold is not None:
                    fold(connection, [row for row in rows if not row.folded])
        return len(pending)

    @staticmethod
    def _mark(connection: Connection, pending: list[PendingStatus], *, folded: bool) -> None:
        o = status_outbox.c
        values: dict[str, Any] = {"published_at": utcnow()}
        if folded:
            values["folded"] = True
        connection.execute(
            sa.update(status_outbox)
            .where(o.sequence.in_([p.sequence for p in pending]))
            .values(**values)
        )

    def pending_count(self) -> int:
        return self.backlog()[0]

    def backlog(self) -> tuple[int, datetime | None]:
        """How many changes wait to be published, and when the oldest was recorded."""
        o = status_outbox.c
        with self.database.engine.connect() as connection:
            row = connection.execute(
                sa.select(sa.func.count(), sa.func.min(o.occurred_at)).where(
                    o.published_at.is_(None)
                )
            ).one()
        oldest = row[1]
        if oldest is not None and oldest.tzinfo is None:  # SQLite drops the zone
            oldest = oldest.replace(tzinfo=UTC)
        return int(row[0]), oldest

    def prune(self, published_before: datetime, batch: int) -> int:
        """Delete up to ``batch`` rows published before ``published_before`` and folded
        into the metric counters."""
        o = status_outbox.c
        with self.database.begin() as connection:
            ids = (
                connection.execute(
                    sa.select(o.sequence)
                    .where(o.published_at < published_before, o.folded)
                    .order_by(o.sequence)
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if ids:
                connection.execute(sa.delete(status_outbox).where(o.sequence.in_(ids)))
        return len(ids)


def _pending(row: Any) -> PendingStatus:
    return PendingStatus(row.sequence, row.change_id, row.type, row.agency_code, row.body)
