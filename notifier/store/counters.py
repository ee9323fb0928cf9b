"""What /metrics reads from the database: monotonic counters folded from the status
outbox, and gauges of the backlog read through indexes, never by grouping the log.

Counters. Every announced change (a delivery reaching a final status, an event
rejected...) already writes a ``status_outbox`` row in the change's own transaction
(:mod:`notifier.store.statuses`). A *fold* claims unfolded rows (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so two folders never take the same row), adds what they count
to ``metric_counters`` (upserts in sorted key order: two folders never deadlock) and
marks them ``folded``, all in one transaction: a row is counted exactly once. The send
path writes nothing more than before (no per-delivery counter update, no hot row).
Who folds: each worker's sweeper every round (the backlog stays small), and each
scrape, up to :data:`SCRAPE_FOLD_LIMIT` rows (what is left is reported as pending).
Retention deletes an outbox row only once it is folded. A counter is never lowered, so
a retention purge or an admin's replay does not make it drop (``rate()`` works).

What is counted, per change:

* ``deliveries`` (channel, provider, status): deliveries reaching each final status. A
  delivery sent then delivered counts once in each;
* ``retries`` (channel): attempts after the first, counted when a send ends (a
  provider's answer or retries given up: the outbox row's ``send_outcome``). An admin's
  replay starts a new count of attempts; its retries are added when it ends;
* ``suppressed`` (channel, reason) and ``held`` (channel, reason): deliveries not sent
  because of a rule or a choice, and held deliveries whose hold ended (sent, failed,
  superseded or suppressed);
* ``rejected_events``: events refused at ingest;
* ``latency_bucket`` (channel, upper bound) and ``latency_sum`` (channel): publish ->
  provider accepted, for sends accepted (``sent``, or ``delivered`` at once), held
  deliveries left out (their wait is a rule's, counted in ``held``). "Publish" is the
  event's ``published_at`` (our publishers' header, or the AMQP timestamp, read by the
  bridge), else its ``received_at`` (docs/operations.md).

:func:`rebuild_counters` (migration 0016, the log-size benchmark after seeding rows
with SQL) recounts them from the log and marks every outbox row folded, in one
transaction: counters start from what the log holds, and nothing is counted twice.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from notifier.store.database import Database, locked_once
from notifier.store.deliveries.lifecycle import ANNOUNCED, DeliveryStatus
from notifier.store.schema import (
    deliveries,
    events,
    metric_counters,
    rejected_events,
    status_outbox,
    utcnow,
)
from notifier.store.statuses import EventChange

# At most this many outbox rows folded per transaction (the sweeper loops).
FOLD_BATCH = 2000
# At most this many folded by one scrape, so a scrape stays quick after an outage of
# the workers; what is left shows in notifier_status_counters_pending.
SCRAPE_FOLD_LIMIT = 2000

# Publish -> accepted, in seconds: from a quick send (tens of ms) to a backlog of an hour.
LATENCY_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
INF = math.inf

DELIVERIES = "deliveries"
RETRIES = "retries"
SUPPRESSED = "suppressed"
HELD = "held"
REJECTED = "rejected_events"
LATENCY_BUCKET = "latency_bucket"
LATENCY_SUM = "latency_sum"

NO_PROVIDER = "none"  # the provider label before any attempt
UNSPECIFIED = "unspecified"  # a suppression recorded without its reason

# Not sent yet: what the backlog gauges count (held ones too, and unknown ones that wait
# for an admin).
IN_FLIGHT = (
    DeliveryStatus.QUEUED.value,
    DeliveryStatus.SENDING.value,
    DeliveryStatus.TEMPORARY_FAILURE.value,
    DeliveryStatus.SCHEDULED.value,
    DeliveryStatus.UNKNOWN.value,
)
# Waiting to be sent now (held ones count once due).
_UNSENT = (
    DeliveryStatus.QUEUED.value,
    DeliveryStatus.SENDING.value,
    DeliveryStatus.TEMPORARY_FAILURE.value,
)
_ACCEPTED = (DeliveryStatus.SENT.value, DeliveryStatus.DELIVERED.value)
_HOLD_ENDED = (DeliveryStatus.SUPPRESSED.value, DeliveryStatus.SUPERSEDED.value)

Key = tuple[str, tuple[str, ...]]


def bucket_label(upper: float) -> str:
    """The stored label of a latency bucket's upper bound ("inf" for the last)."""
    return "inf" if upper == INF else repr(float(upper))


def bucket_of(seconds: float) -> str:
    for upper in LATENCY_BUCKETS:
        if seconds <= upper:
            return bucket_label(upper)
    return bucket_label(INF)


@dataclass(frozen=True)
class CounterValues:
    """Every counter's value, by metric and label values."""

    values: dict[str, dict[tuple[str, ...], float]]

    def of(self, metric: str) -> dict[tuple[str, ...], float]:
        return self.values.get(metric, {})

    def latency(self, channel: str) -> tuple[list[tuple[float, float]], float]:
        """A channel's cumulative latency buckets (upper bound, count) and the sum."""
        per_bucket = {
            labels[1]: value
            for labels, value in self.of(LATENCY_BUCKET).items()
            if labels[0] == channel
        }
        cumulative, running = [], 0.0
        for upper in (*LATENCY_BUCKETS, INF):
            running += per_bucket.get(bucket_label(upper), 0.0)
            cumulative.append((upper, running))
        return cumulative, self.of(LATENCY_SUM).get((channel,), 0.0)

    def latency_channels(self) -> list[str]:
        return sorted({labels[0] for labels in self.of(LATENCY_BUCKET)})


class MetricCounters:
    """Folds status changes into the counters, and reads them."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def fold(self, limit: int = FOLD_BATCH) -> int:
        """Fold up to ``limit`` unfolded outbox rows, oldest first, in one transaction;
        returns how many. Rows another folder (or the relay) holds are skipped."""
        o = status_outbox.c
        claim = sa.select(o.sequence).where(sa.not_(o.folded)).order_by(o.sequence).limit(limit)
        if not self.database.is_sqlite:
            claim = claim.with_for_update(skip_locked=True)
        # SQLite: the UPDATE takes the write lock before it reads, so a second folder
        # waits and then finds these rows folded.
        with self.database.begin() as connection:
            claimed = locked_once(claim, "claimed")
            rows = connection.execute(
                sa.update(status_outbox)
                .where(o.sequence.in_(sa.select(claimed.c.sequence)))
                .values(folded=True)
                .returning(o.type, o.body, o.send_outcome)
            ).all()
            if rows:
                add(connection, self.database.is_sqlite, _increments(connection, rows))
        return len(rows)

    def fold_all(self, batch: int = FOLD_BATCH, rounds: int | None = None) -> int:
        """Fold until nothing is left (or ``rounds`` batches); returns how many."""
        total, done = 0, 0
        while rounds is None or done < rounds:
            folded = self.fold(batch)
            total += folded
            done += 1
            if folded < batch:
                break
        return total

    def pending(self) -> int:
        """Outbox rows not folded yet (read through the partial index of them)."""
        with self.database.engine.connect() as connection:
            found = connection.execute(
                sa.select(sa.func.count())
                .select_from(status_outbox)
                .where(sa.not_(status_outbox.c.folded))
            ).scalar_one()
        return int(found)

    def read(self) -> CounterValues:
        c = metric_counters.c
        values: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        with self.database.engine.connect() as connection:
            for row in connection.execute(sa.select(c.metric, c.labels, c.value)):
                values[row.metric][tuple(json.loads(row.labels))] = float(row.value)
        return CounterValues(dict(values))


def fold_rows(connection: Connection, rows: Sequence[Any]) -> None:
    """Fold outbox rows the caller holds and marks folded in its transaction (the
    relay, as it marks them published: :meth:`StatusOutbox.publish_pending`)."""
    if rows:
        add(connection, connection.dialect.name == "sqlite", _increments(connection, rows))


def add(connection: Connection, is_sqlite: bool, increments: dict[Key, float]) -> None:
    """Add ``increments`` to the counters, one upsert in sorted key order (two folders
    lock the same rows in the same order, so they never deadlock)."""
    if not increments:
        return
    insert = (sqlite.insert if is_sqlite else postgresql.insert)(metric_counters)
    statement = insert.on_conflict_do_update(
        index_elements=["metric", "labels"],
        set_={"value": metric_counters.c.value + insert.excluded.value},
    )
    rows = [
        {"metric": metric, "labels": _labels(labels), "value": value}
        for (metric, labels), value in increments.items()
    ]
    connection.execute(statement.values(sorted(rows, key=lambda r: (r["metric"], r["labels"]))))


def _labels(values: Iterable[str]) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class _DeliveryFacts:
    suppressed_reason: str | None
    hold_reason: str | None
    published_at: datetime | None


def _increments(connection: Connection, rows: Sequence[Any]) -> dict[Key, float]:
    """What these outbox rows add to the counters."""
    increments: dict[Key, float] = defaultdict(float)
    changes = [(row, row.body.get("delivery")) for row in rows]
    # The reasons and the event's receipt are read for the changes that need them
    # (one query by primary key), not carried by every outbox row.
    wanted = [
        UUID(d["id"])
        for row, d in changes
        if d is not None
        and (row.send_outcome or d["status"] in (DeliveryStatus.SUPPRESSED.value, *_HOLD_ENDED))
    ]
    facts = _facts(connection, wanted)
    for row, d in changes:
        if row.type == EventChange.REJECTED.value:
            increments[(REJECTED, ())] += 1
        if d is None:
            continue
        channel, status = d["channel"], d["status"]
        increments[(DELIVERIES, (channel, d["provider"] or NO_PROVIDER, status))] += 1
        fact = facts.get(UUID(d["id"]))
        if row.send_outcome and d["attempts"] > 1:
            increments[(RETRIES, (channel,))] += d["attempts"] - 1
        if fact is None:
            continue
        if status == DeliveryStatus.SUPPRESSED.value:
            increments[(SUPPRESSED, (channel, fact.suppressed_reason or UNSPECIFIED))] += 1
        if fact.hold_reason is not None and (row.send_outcome or status in _HOLD_ENDED):
            increments[(HELD, (channel, fact.hold_reason))] += 1
        if (
            row.send_outcome
            and status in _ACCEPTED
            and fact.hold_reason is None
            and fact.published_at is not None
        ):
            accepted_at = datetime.fromisoformat(d["updated_at"])
            seconds = max(0.0, (accepted_at - fact.published_at).total_seconds())
            increments[(LATENCY_BUCKET, (channel, bucket_of(seconds)))] += 1
            increments[(LATENCY_SUM, (channel,))] += seconds
    return increments


def _facts(connection: Connection, delivery_ids: list[UUID]) -> dict[UUID, _DeliveryFacts]:
    if not delivery_ids:
        return {}
    d, e = deliveries.c, events.c
    found = connection.execute(
        sa.select(
            d.delivery_id,
            d.suppressed_reason,
            d.hold_reason,
            sa.func.coalesce(e.published_at, e.received_at).label("published_at"),
        )
        .select_from(deliveries.outerjoin(events, e.event_id == d.event_id))
        .where(d.delivery_id.in_(delivery_ids))
    ).all()
    return {
        row.delivery_id: _DeliveryFacts(row.suppressed_reason, row.hold_reason, row.published_at)
        for row in found
    }


# -- the recount -------------------------------------------------------------------------


def rebuild_counters(database: Database) -> None:
    """Recount every counter from the log and mark every outbox row folded, in one
    transaction (REPEATABLE READ on PostgreSQL: the recount and the marking see the same
    rows, and a change committed meanwhile stays unfolded, to be folded later).

    For an upgrade (migration 0016) and after seeding rows with SQL (the log-size
    benchmark). On a running system prefer the fold: a folder working meanwhile makes
    this fail (serialisation error), and it can be run again."""
    with database.engine.connect() as connection:
        if not database.is_sqlite:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            rebuild(connection)


def rebuild(connection: Connection) -> None:
    """:func:`rebuild_counters` in the caller's transaction (the migration's).

    From the log, what the fold would have counted: each delivery once in its current
    final status (one sent then delivered before the upgrade counts as delivered only),
    its retries once it is final, its suppression or ended hold; the rejects kept; the
    latency of each delivery sent (not held) from its event's publish (``published_at``,
    else ``received_at``)."""
    is_sqlite = connection.dialect.name == "sqlite"
    d, e = deliveries.c, events.c
    final = list(ANNOUNCED)
    increments: dict[Key, float] = defaultdict(float)
    grouped = (
        sa.select(
            d.channel,
            d.provider,
            d.status,
            d.suppressed_reason,
            d.hold_reason,
            sa.func.count().label("n"),
            sa.func.sum(sa.case((d.attempts > 1, d.attempts - 1), else_=0)).label("retries"),
        )
        .where(d.status.in_(final))
        .group_by(d.channel, d.provider, d.status, d.suppressed_reason, d.hold_reason)
    )
    for row in connection.execute(grouped):
        n = int(row.n)
        increments[(DELIVERIES, (row.channel, row.provider or NO_PROVIDER, row.status))] += n
        if row.retries:
            increments[(RETRIES, (row.channel,))] += int(row.retries)
        if row.status == DeliveryStatus.SUPPRESSED.value:
            reason = row.suppressed_reason or UNSPECIFIED
            increments[(SUPPRESSED, (row.channel, reason))] += n
        if row.hold_reason is not None:
            increments[(HELD, (row.channel, row.hold_reason))] += n
    rejected = connection.execute(
        sa.select(sa.func.count()).select_from(rejected_events)
    ).scalar_one()
    if rejected:
        increments[(REJECTED, ())] += int(rejected)
    published = sa.func.coalesce(e.published_at, e.received_at)
    seconds: Any = (
        (sa.func.julianday(d.sent_at) - sa.func.julianday(published)) * 86400.0
        if is_sqlite
        else sa.extract("epoch", d.sent_at - published)
    )
    latency = sa.case((seconds > 0, seconds), else_=0.0)
    bucket = sa.case(
        *[(latency <= upper, bucket_label(upper)) for upper in LATENCY_BUCKETS],
        else_=bucket_label(INF),
    )
    observed = (
        sa.select(
            d.channel,
            bucket.label("bucket"),
            sa.func.count().label("n"),
            sa.func.sum(latency).label("total"),
        )
        .select_from(deliveries.join(events, e.event_id == d.event_id))
        .where(d.sent_at.is_not(None), d.hold_reason.is_(None))
        .group_by(d.channel, bucket)
    )
    for row in connection.execute(observed):
        increments[(LATENCY_BUCKET, (row.channel, row.bucket))] += int(row.n)
        increments[(LATENCY_SUM, (row.channel,))] += float(row.total or 0.0)
    connection.execute(sa.delete(metric_counters))
    add(connection, is_sqlite, increments)
    connection.execute(
        sa.update(status_outbox).where(sa.not_(status_outbox.c.folded)).values(folded=True)
    )


# -- the backlog gauges ------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """The gauges bounded by what waits, not by the size of the log."""

    # (channel, provider or "none", status) -> deliveries not final, held or unknown
    in_flight: dict[tuple[str, str, str], int]
    # (channel, hold reason) -> deliveries held now
    held: dict[tuple[str, str], int]
    # channel -> dead letters (failed after their retries ran out; replayable)
    dead_letters: dict[str, int]
    # channel -> when the oldest delivery waiting to be sent now became due
    oldest_unsent: dict[str, datetime]


def backlog(database: Database, now: datetime | None = None) -> Backlog:
    """Read through indexes: the status index for the deliveries not final (one pass),
    the dead letters' partial index."""
    now = now or utcnow()
    d = deliveries.c
    in_flight: dict[tuple[str, str, str], int] = {}
    held: dict[tuple[str, str], int] = {}
    dead: dict[str, int] = {}
    oldest: dict[str, datetime] = {}
    # One pass over the deliveries not final (the status index): counts, and when the
    # oldest of those waiting to be sent now became due.
    waiting_since = sa.case(
        (d.status.in_(_UNSENT), sa.func.coalesce(d.due_at, d.created_at)),
        (sa.and_(d.status == DeliveryStatus.SCHEDULED.value, d.due_at <= now), d.due_at),
        else_=sa.null(),
    )
    with database.engine.connect() as connection:
        for row in connection.execute(
            sa.select(
                d.channel,
                d.provider,
                d.status,
                d.hold_reason,
                sa.func.count().label("n"),
                sa.func.min(waiting_since).label("since"),
            )
            .where(d.status.in_(IN_FLIGHT))
            .group_by(d.channel, d.provider, d.status, d.hold_reason)
        ):
            key = (row.channel, row.provider or NO_PROVIDER, row.status)
            in_flight[key] = in_flight.get(key, 0) + int(row.n)
            if row.status == DeliveryStatus.SCHEDULED.value and row.hold_reason is not None:
                reason_key = (row.channel, row.hold_reason)
                held[reason_key] = held.get(reason_key, 0) + int(row.n)
            since = _aware(row.since)
            if since is not None and (row.channel not in oldest or since < oldest[row.channel]):
                oldest[row.channel] = since
        for row in connection.execute(
            sa.select(d.channel, sa.func.count().label("n")).where(d.exhausted).group_by(d.channel)
        ):
            dead[row.channel] = int(row.n)
    return Backlog(in_flight, held, dead, oldest)


def _aware(value: Any) -> datetime | None:
    """A timestamp read from an expression (SQLite gives text, without its zone)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
