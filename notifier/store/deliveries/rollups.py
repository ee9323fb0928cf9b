"""The hourly rollup of the delivery log: what reports, the console overview and the
budget read for whole settled hours, so they stay fast as the log grows (issue 21).

Per UTC hour (tables in :mod:`notifier.store.schema`): deliveries created per agency,
procedure, channel, status and provider with their cost, SMS segments and dead
letters (``delivery_hours``); the suppressed and held ones by reason
(``delivery_reason_hours``); the sent ones per channel in log-spaced delivery-time
buckets (``delivery_latency_hours``); and events received (``event_hours``).

How a reader stays exact. A read opens one snapshot (REPEATABLE READ) and splits its
range with :meth:`Rollups.plan`: the whole hours before ``rollup_state.rolled_until``
come from the rollup, the rest (minutes at the range's edges, the hours not rolled up
yet, and *dirty* hours) from the raw rows. An hour is dirty when a row of it changed
after it was rolled up: PostgreSQL triggers (migration 0018) write a ``rollup_dirty``
mark in the changing transaction for any insert, delete or counted change of a delivery
(or event) older than :data:`MARK_AFTER`, so whoever sees the change sees the mark.
Hours are rolled up only once :data:`SETTLE` has passed, far more than the margin, so
a change the trigger did not mark (a row younger than the margin) always lands in an
hour that is not rolled up yet. Delivery times read from the rollup are estimated
from their buckets (within one bucket's width, about 9%); a range with no rolled-up
hour keeps the exact percentiles.

Who refreshes. :meth:`Rollups.refresh` recomputes dirty hours, then rolls up the
hours that settled, at most ``max_hours`` per run; each worker process runs it every
``[rollup] interval_s`` (:class:`notifier.ops.rollups.RollupJob`), and ``notifier
rollup`` runs it on demand. Refreshers take one advisory lock, so two never interleave;
each hour is recomputed from the raw rows (delete, then insert), never incremented,
so a repeated or overlapping refresh cannot count twice. A mark is deleted only in
the transaction that recomputes its hour, before reading the raw rows: a change that
commits later keeps its own mark for the next run.

SQLite (the embedded demo, one process, a small log) keeps the live queries: no
triggers there, and :meth:`Rollups.plan` reads everything raw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from notifier.adapter import REPLY_STATUS
from notifier.costs import CostSource
from notifier.store.database import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.schema import (
    deliveries,
    delivery_hours,
    delivery_latency_hours,
    delivery_reason_hours,
    event_hours,
    events,
    rollup_dirty,
    rollup_state,
    utcnow,
)

HOUR = timedelta(hours=1)
# An hour is rolled up once it ended this long ago. The triggers mark changes to rows
# older than MARK_AFTER; the difference covers the longest transaction that could
# still commit a change to an hour being rolled up (ours take seconds).
SETTLE = timedelta(hours=1)
MARK_AFTER = timedelta(minutes=10)
STATE = "deliveries"
# pg_advisory_xact_lock(class, id): the two-key form, apart from the dossier locks.
_LOCK = (42017, 1)
DEFAULT_MAX_HOURS = 48

# Delivery-time buckets: 0 is [0, BASE); k >= 1 is [BASE * 2^((k-1)/PER_DOUBLING),
# BASE * 2^(k/PER_DOUBLING)); the last one has no upper bound (15.5 days and more).
BUCKET_BASE_S = 0.01
BUCKETS_PER_DOUBLING = 8
LAST_BUCKET = 27 * BUCKETS_PER_DOUBLING


def bucket_of(seconds: float) -> int:
    """The delivery-time bucket of ``seconds`` (as the rollup's SQL computes it)."""
    if seconds < BUCKET_BASE_S:
        return 0
    index = 1 + math.floor(math.log(seconds / BUCKET_BASE_S) * BUCKETS_PER_DOUBLING / math.log(2))
    return min(LAST_BUCKET, index)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """[low, high) of a bucket in seconds; the last one's high is infinite."""
    if bucket <= 0:
        return 0.0, BUCKET_BASE_S
    low = BUCKET_BASE_S * 2 ** ((bucket - 1) / BUCKETS_PER_DOUBLING)
    if bucket >= LAST_BUCKET:
        return low, math.inf
    return low, BUCKET_BASE_S * 2 ** (bucket / BUCKETS_PER_DOUBLING)


def bucket_sql(seconds: str) -> str:
    """:func:`bucket_of` in PostgreSQL, of a double precision expression."""
    return (
        f"CASE WHEN {seconds} < {BUCKET_BASE_S} THEN 0 ELSE least({LAST_BUCKET}, 1 + "
        f"floor(ln({seconds} / {BUCKET_BASE_S}) * {BUCKETS_PER_DOUBLING} / ln(2)))::int END"
    )


def estimated_percentile(histogram: dict[int, int], q: float) -> float:
    """The ``q`` quantile (as percentile_cont interpolates it) of samples known by bucket:
    each bucket's samples taken as spread evenly over it. Within a bucket's width of the
    exact figure when the neighbouring samples share a bucket."""
    total = sum(histogram.values())
    if not total:
        raise ValueError("no samples")
    position = q * (total - 1)
    low = math.floor(position)
    return _nth(histogram, low) + (
        _nth(histogram, min(low + 1, total - 1)) - _nth(histogram, low)
    ) * (position - low)


def _nth(histogram: dict[int, int], rank: int) -> float:
    seen = 0
    for bucket in sorted(histogram):
        count = histogram[bucket]
        if rank < seen + count:
            low, high = bucket_bounds(bucket)
            if math.isinf(high):
                return low
            return low + (high - low) * (rank - seen + 0.5) / count
        seen += count
    raise ValueError("rank beyond the samples")


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


Bound = datetime | None  # None: unbounded


@dataclass(frozen=True)
class ReadPlan:
    """How a read covers [since, until): ``rolled`` whole-hour spans from the rollup,
    ``raw`` spans from the raw rows. Together they cover the range once."""

    rolled: tuple[tuple[datetime, datetime], ...]
    raw: tuple[tuple[Bound, Bound], ...]

    def rolled_where(self, hour: Any) -> sa.ColumnElement[bool]:
        return _any_span(hour, self.rolled)

    def raw_where(self, column: Any) -> sa.ColumnElement[bool]:
        return _any_span(column, self.raw)

    def statements(self, rolled: Any, hour: Any, raw: Any, created: Any) -> list[Any]:
        """``rolled`` (a select from a rollup table, by its ``hour``) over the rolled-up
        spans and ``raw`` (from the raw rows, by their ``created`` time) over the rest:
        the one or two statements whose rows, added up, answer the read."""
        found = []
        if self.rolled:
            found.append(rolled.where(self.rolled_where(hour)))
        if self.raw:
            found.append(raw.where(self.raw_where(created)))
        return found


def _any_span(column: Any, spans: Sequence[tuple[Bound, Bound]]) -> sa.ColumnElement[bool]:
    if not spans:
        return sa.false()
    conditions = []
    for start, end in spans:
        parts = []
        if start is not None:
            parts.append(column >= start)
        if end is not None:
            parts.append(column < end)
        conditions.append(sa.and_(sa.true(), *parts))
    return sa.or_(*conditions)


def _spans(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Consecutive hours merged into [start, end) spans."""
    spans: list[tuple[datetime, datetime]] = []
    for hour in sorted(hours):
        if spans and spans[-1][1] == hour:
            spans[-1] = (spans[-1][0], hour + HOUR)
        else:
            spans.append((hour, hour + HOUR))
    return spans


def _lt(a: Bound, b: Bound) -> bool:
    """a < b, None being -inf as a start and +inf as an end (only used start < end)."""
    return a is None or b is None or a < b


@dataclass(frozen=True)
class RefreshReport:
    """What one refresh did: dirty hours recomputed, hours newly rolled up, and where
    the rolled-up hours end now."""

    recomputed: int
    rolled: int
    rolled_until: datetime | None


_DELIVERY_HOURS = """
INSERT INTO delivery_hours (hour, agency_code, procedure_code, channel, status, provider,
    deliveries, exhausted, charged, cost_vnd, reported_vnd, segmented, segments)
SELECT date_trunc('hour', created_at, 'UTC'), agency_code, procedure_code, channel, status,
       coalesce(provider, ''), count(*), count(*) FILTER (WHERE exhausted), count(cost_vnd),
       coalesce(sum(cost_vnd), 0),
       coalesce(sum(cost_vnd) FILTER (WHERE cost_source = :reported), 0),
       count(segments), coalesce(sum(segments), 0)
FROM deliveries
WHERE created_at >= :lo AND created_at < :hi
GROUP BY 1, 2, 3, 4, 5, 6
"""
_REASON_HOURS = """
INSERT INTO delivery_reason_hours (hour, channel, status, suppressed_reason, hold_reason,
                                   deliveries)
SELECT date_trunc('hour', created_at, 'UTC'), channel, status, coalesce(suppressed_reason, ''),
       coalesce(hold_reason, ''), count(*)
FROM deliveries
WHERE created_at >= :lo AND created_at < :hi
  AND (status = :suppressed OR hold_reason IS NOT NULL)
GROUP BY 1, 2, 3, 4, 5
"""
# Built from constants only (the bucket's numbers), not from input.
_LATENCY_HOURS = f"""
INSERT INTO delivery_latency_hours (hour, channel, bucket, deliveries)
SELECT date_trunc('hour', created_at, 'UTC'), channel, {bucket_sql("s")}, count(*)
FROM (SELECT d.created_at, d.channel,
             greatest(date_part('epoch', d.sent_at - e.occurred_at), 0) AS s
      FROM deliveries AS d JOIN events AS e ON e.event_id = d.event_id
      WHERE d.created_at >= :lo AND d.created_at < :hi AND d.sent_at IS NOT NULL) AS sent
GROUP BY 1, 2, 3
"""  # noqa: S608
_EVENT_HOURS = """
INSERT INTO event_hours (hour, events)
SELECT date_trunc('hour', received_at, 'UTC'), count(*)
FROM events
WHERE received_at >= :lo AND received_at < :hi AND status <> :reply
GROUP BY 1
"""
_ROLLUP_TABLES = (delivery_hours, delivery_reason_hours, delivery_latency_hours, event_hours)


def recompute(connection: Connection, lo: datetime, hi: datetime) -> None:
    """Replace the rollup of the hours in [lo, hi) with their figures from the raw rows,
    in the caller's transaction (which holds the refresh lock)."""
    for table in _ROLLUP_TABLES:
        connection.execute(sa.delete(table).where(table.c.hour >= lo, table.c.hour < hi))
    values = {
        "lo": lo,
        "hi": hi,
        "reported": CostSource.REPORTED.value,
        "suppressed": DeliveryStatus.SUPPRESSED.value,
        "reply": REPLY_STATUS,
    }
    for statement in (_DELIVERY_HOURS, _REASON_HOURS, _LATENCY_HOURS, _EVENT_HOURS):
        # Each statement binds only the values it names.
        connection.execute(
            sa.text(statement), {k: v for k, v in values.items() if f":{k}" in statement}
        )


def lock(connection: Connection) -> None:
    """Serialise refreshers until the caller's transaction ends."""
    connection.execute(sa.select(sa.func.pg_advisory_xact_lock(*_LOCK)))


def rolled_until(connection: Connection) -> datetime | None:
    found: datetime | None = connection.execute(
        sa.select(rollup_state.c.rolled_until).where(rollup_state.c.name == STATE)
    ).scalar_one_or_none()
    return found


def _set_rolled_until(connection: Connection, moment: datetime) -> None:
    s = rollup_state.c
    changed = connection.execute(
        sa.update(rollup_state)
        .where(s.name == STATE)
        .values(rolled_until=moment, updated_at=utcnow())
    ).rowcount
    if not changed:
        connection.execute(
            sa.insert(rollup_state).values(name=STATE, rolled_until=moment, updated_at=utcnow())
        )


def _first_hour(connection: Connection) -> datetime | None:
    """The hour of the oldest delivery or event (both found through an index)."""
    oldest = [
        connection.execute(sa.select(sa.func.min(deliveries.c.created_at))).scalar_one(),
        connection.execute(sa.select(sa.func.min(events.c.received_at))).scalar_one(),
    ]
    found = [moment for moment in oldest if moment is not None]
    return floor_hour(min(found)) if found else None


def rebuild_on(connection: Connection, now: datetime | None = None) -> datetime:
    """Roll up every settled hour afresh, in the caller's transaction (migration 0018,
    the benchmark after seeding). Returns where the rolled-up hours end."""
    target = floor_hour((now or utcnow()) - SETTLE)
    lock(connection)
    connection.execute(sa.delete(rollup_dirty))
    first = _first_hour(connection)
    for table in _ROLLUP_TABLES:
        connection.execute(sa.delete(table))
    if first is not None and first < target:
        recompute(connection, first, target)
    _set_rolled_until(connection, target)
    # Fresh statistics, so the first reports plan on the tables' real size.
    connection.execute(sa.text("ANALYZE " + ", ".join(t.name for t in _ROLLUP_TABLES)))
    return target


class Rollups:
    """Reads planned over the rollup and the raw rows; refreshes and rebuilds."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @property
    def enabled(self) -> bool:
        return not self.database.is_sqlite

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection whose reads share one snapshot (so the rollup, its state and the
        raw rows agree), read-only."""
        with self.database.engine.connect() as connection:
            if self.enabled:
                connection = connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            with connection.begin():
                yield connection

    def plan(
        self,
        connection: Connection,
        since: Bound,
        until: Bound,
        *,
        hourly: bool = True,
    ) -> ReadPlan:
        """Split [since, until) into rolled-up whole hours and raw spans. ``hourly``
        False reads everything raw (a grouping finer than the hour)."""
        if not self.enabled or not hourly:
            return ReadPlan((), ((since, until),))
        ready = rolled_until(connection)
        if ready is None:
            return ReadPlan((), ((since, until),))
        lo = None if since is None else ceil_hour(since)
        hi = ready if until is None else min(floor_hour(until), ready)
        if lo is not None and lo >= hi:
            return ReadPlan((), ((since, until),))
        dirty_query = sa.select(rollup_dirty.c.hour).distinct().where(rollup_dirty.c.hour < hi)
        if lo is not None:
            dirty_query = dirty_query.where(rollup_dirty.c.hour >= lo)
        dirty = set(connection.execute(dirty_query).scalars())
        if lo is None:
            # From the beginning: the first rolled-up hour is the oldest one there is.
            first = connection.execute(sa.select(sa.func.min(delivery_hours.c.hour))).scalar()
            first_event = connection.execute(sa.select(sa.func.min(event_hours.c.hour))).scalar()
            starts = [h for h in (first, first_event) if h is not None]
            lo = min(starts) if starts else hi
        rolled: list[tuple[datetime, datetime]] = []
        start = lo
        for hour in [*sorted(dirty), hi]:
            if start < hour:
                rolled.append((start, hour))
            start = max(start, hour + HOUR)
        raw: list[tuple[Bound, Bound]] = []
        cursor: Bound = since
        for start, end in rolled:
            if _lt(cursor, start):
                raw.append((cursor, start))
            cursor = end
        if _lt(cursor, until):
            raw.append((cursor, until))
        return ReadPlan(tuple(rolled), tuple(raw))

    def refresh(
        self, now: datetime | None = None, max_hours: int = DEFAULT_MAX_HOURS
    ) -> RefreshReport:
        """Recompute dirty hours, then roll up settled ones: at most ``max_hours`` hours
        in all, one transaction per step (several runs catch up a long backlog)."""
        if not self.enabled:
            return RefreshReport(0, 0, None)
        target = floor_hour((now or utcnow()) - SETTLE)
        budget = max(0, max_hours)
        recomputed = 0
        m = rollup_dirty.c
        while budget > 0:
            with self.database.begin() as connection:
                lock(connection)
                ready = rolled_until(connection)
                # Marks of hours not rolled up yet: they are read raw and rolled fresh.
                stale = sa.delete(rollup_dirty)
                if ready is not None:
                    stale = stale.where(m.hour >= ready)
                connection.execute(stale)
                if ready is None:
                    break
                hours = (
                    connection.execute(
                        sa.select(m.hour)
                        .where(m.hour < ready)
                        .group_by(m.hour)
                        .order_by(m.hour)
                        .limit(min(budget, 24))
                    )
                    .scalars()
                    .all()
                )
                if not hours:
                    break
                # Only the marks this transaction sees: a change committing meanwhile
                # keeps its mark, and its hour is recomputed again next time.
                connection.execute(sa.delete(rollup_dirty).where(m.hour.in_(hours)))
                for hour in hours:
                    recompute(connection, hour, hour + HOUR)
            recomputed += len(hours)
            budget -= len(hours)
        rolled = 0
        with self.database.begin() as connection:
            lock(connection)
            ready = rolled_until(connection)
            start = ready if ready is not None else (_first_hour(connection) or target)
            end = max(start, min(target, start + budget * HOUR))
            if end > start:
                connection.execute(sa.delete(rollup_dirty).where(m.hour >= start, m.hour < end))
                recompute(connection, start, end)
                rolled = int((end - start) / HOUR)
            if ready is None or end > ready:
                _set_rolled_until(connection, end)
                ready = end
        return RefreshReport(recomputed, rolled, ready)

    def rebuild(self, now: datetime | None = None) -> datetime | None:
        """Roll up every settled hour afresh (after loading rows with SQL)."""
        if not self.enabled:
            return None
        with self.database.begin() as connection:
            return rebuild_on(connection, now)

    def lag(self, now: datetime | None = None) -> timedelta | None:
        """How far the rolled-up hours end behind ``now`` (None: nothing rolled up)."""
        if not self.enabled:
            return None
        with self.database.engine.connect() as connection:
            ready = rolled_until(connection)
        return None if ready is None else (now or utcnow()) - ready


def rebuild_rollups(database: Database, now: datetime | None = None) -> datetime | None:
    """Roll up every settled hour afresh: for the benchmark after it seeds rows in SQL."""
    return Rollups(database).rebuild(now)
