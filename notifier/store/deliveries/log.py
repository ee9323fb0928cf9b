"""Queries of the delivery log and the rejects, shared by the CLI and the HTTP API."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from notifier.adapter import REPLY_STATUS
from notifier.masking import recipient_hash
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.deliveries.rollups import ReadPlan, Rollups, bucket_sql, estimated_percentile
from notifier.store.health import CircuitState, shown_circuit_state
from notifier.store.schema import (
    deliveries,
    delivery_attempts,
    delivery_hours,
    delivery_latency_hours,
    delivery_reason_hours,
    event_hours,
    events,
    provider_health,
    rejected_events,
    utcnow,
)

MAX_PAGE = 500
# Ids and offsets fit the database's 32-bit integers; the API refuses larger ones.
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class DeliveryQuery:
    dossier_code: str | None = None
    channel: str | None = None
    status: str | None = None
    agency_code: str | None = None
    event_id: UUID | None = None
    recipient: str | None = None  # full contact: matched through its keyed hash
    recipient_hash: str | None = None  # that hash, already computed (console links)
    recipient_masked: str | None = None  # as displayed, e.g. "*******567"
    provider: str | None = None
    procedure_code: str | None = None
    # With status permanent-failure: True keeps the failures that used up their retries
    # (the ``exhausted`` column: dead letters), False the others.
    gave_up: bool | None = None
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
    procedure_code: str = ""
    fallback_of: UUID | None = None
    # Held (status scheduled): until when; and why it was held or suppressed.
    due_at: datetime | None = None
    hold_reason: str | None = None
    suppressed_reason: str | None = None

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
    # Who submitted it: api-key, broker-user, service or unidentified (None: kept before
    # submitters were recorded).
    submitter_kind: str | None = None
    submitter_name: str | None = None
    replay_refusal: str | None = None  # why the last replay was refused

    @property
    def submitted_by(self) -> str:
        if self.submitter_kind is None:
            return "-"
        return f"{self.submitter_kind}:{self.submitter_name}"


@dataclass(frozen=True)
class ReasonCount:
    """Deliveries held or suppressed for one reason (see :meth:`DeliveryLog.reason_counts`)."""

    channel: str
    kind: str  # suppressed, scheduled (held now) or held (held earlier, released)
    reason: str
    count: int


PERCENTILES = (0.5, 0.9, 0.95, 0.99)
# The grouping columns the hourly rollup keeps (event_status is read from raw rows).
ROLLED_UP_COLUMNS = frozenset({"agency_code", "procedure_code", "channel", "status", "provider"})
# Attempt outcomes that are a provider's answer to a send (not receipts or replays).
_SEND_OUTCOMES = tuple(
    status.value
    for status in (
        DeliveryStatus.SENT,
        DeliveryStatus.DELIVERED,
        DeliveryStatus.TEMPORARY_FAILURE,
        DeliveryStatus.PERMANENT_FAILURE,
    )
)


@dataclass(frozen=True)
class Percentiles:
    """Delivery time in seconds: event ``occurred_at`` to delivery ``sent_at``."""

    count: int
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, count: int, values: Sequence[float | None] | None) -> Percentiles:
        if not count or not values:
            return cls(count)
        p50, p90, p95, p99 = (None if v is None else round(float(v), 3) for v in values)
        return cls(count, p50, p90, p95, p99)

    @classmethod
    def estimated(cls, histogram: dict[int, int]) -> Percentiles:
        """From delivery-time buckets (the rollup's): each figure within its bucket."""
        count = sum(histogram.values())
        if not count:
            return cls(0)
        return cls.of(count, [estimated_percentile(histogram, q) for q in PERCENTILES])

    @classmethod
    def from_samples(cls, samples: Iterable[float]) -> Percentiles:
        ordered = sorted(max(0.0, s) for s in samples)
        if not ordered:
            return cls(0)
        return cls.of(len(ordered), [percentile(ordered, q) for q in PERCENTILES])


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not ordered:
        raise ValueError("no samples")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class ActivityCount:
    bucket: int  # index of the time bucket from the start of the window
    channel: str
    status: str
    count: int


@dataclass(frozen=True)
class EventRow:
    event_id: UUID
    received_at: datetime
    occurred_at: datetime
    source_system: str
    agency_code: str
    procedure_code: str
    status: str


@dataclass(frozen=True)
class DeliveryTimeline:
    delivery: DeliveryRow
    attempts: list[AttemptRow]


@dataclass(frozen=True)
class DossierTimeline:
    dossier_code: str
    events: list[EventRow]
    deliveries: list[DeliveryTimeline]


@dataclass(frozen=True)
class ProviderStat:
    """A provider's send outcomes from the attempt log over a recent window."""

    provider: str
    channel: str
    ok: int = 0
    temporary_failures: int = 0
    permanent_failures: int = 0
    last_attempt_at: datetime | None = None

    @property
    def attempts(self) -> int:
        return self.ok + self.temporary_failures + self.permanent_failures

    @property
    def error_rate(self) -> float | None:
        return None if not self.attempts else 1 - self.ok / self.attempts


@dataclass(frozen=True)
class ProviderHealthRow:
    provider: str
    channel: str
    circuit_state: str
    consecutive_failures: int
    open_until: datetime | None
    last_error: str | None
    details: dict[str, Any] | None
    updated_at: datetime
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None


class DeliveryLog:
    def __init__(self, database: Database, hash_key: str) -> None:
        self.database = database
        self.hash_key = hash_key

    def search(self, query: DeliveryQuery) -> list[DeliveryRow]:
        d = deliveries.c
        statement = self._filtered(_delivery_columns(), query)
        statement = (
            statement.order_by(d.created_at.desc(), d.delivery_id)
            .limit(min(query.limit, MAX_PAGE))
            .offset(query.offset)
        )
        with self.database.engine.connect() as connection:
            return [DeliveryRow(**row._mapping) for row in connection.execute(statement)]

    def count(self, query: DeliveryQuery) -> int:
        """How many deliveries match ``query`` (its limit and offset aside), for paging."""
        statement = self._filtered(sa.select(sa.func.count()).select_from(deliveries), query)
        with self.database.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def _filtered(self, statement: Any, query: DeliveryQuery) -> Any:
        d = deliveries.c
        filters = {
            d.dossier_code: query.dossier_code,
            d.channel: query.channel,
            d.status: query.status,
            d.agency_code: query.agency_code,
            d.event_id: query.event_id,
            d.recipient_masked: query.recipient_masked,
            d.provider: query.provider,
            d.procedure_code: query.procedure_code,
            d.recipient_hash: query.recipient_hash,
        }
        for column, value in filters.items():
            if value is not None:
                statement = statement.where(column == value)
        if query.recipient is not None:
            statement = statement.where(
                d.recipient_hash == recipient_hash(query.recipient, self.hash_key)
            )
        if query.gave_up is not None:
            statement = statement.where(d.exhausted == query.gave_up)
        if query.since is not None:
            statement = statement.where(d.created_at >= query.since)
        if query.until is not None:
            statement = statement.where(d.created_at < query.until)
        return statement

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
            r.submitter_kind,
            r.submitter_name,
            r.replay_refusal,
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

    # -- operators' console and reports ---------------------------------------------------

    def activity(
        self, since: datetime, until: datetime, bucket_seconds: int
    ) -> list[ActivityCount]:
        """Deliveries created in [since, until) per time bucket, channel and status (from
        the hourly rollup when the buckets are whole hours from a whole hour)."""
        d, h = deliveries.c, delivery_hours.c
        start = int(since.timestamp())
        if self.database.is_sqlite:
            epoch: Any = sa.cast(sa.func.strftime("%s", d.created_at), sa.Integer)
            bucket: Any = sa.cast((epoch - start) / bucket_seconds, sa.Integer)
        else:
            bucket = sa.func.floor((sa.extract("epoch", d.created_at) - start) / bucket_seconds)
        hourly = bucket_seconds % 3600 == 0 and start % 3600 == 0
        counts: Counter[tuple[int, str, str]] = Counter()
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until, hourly=hourly)
            statements = []
            if plan.rolled:
                rolled_bucket = sa.func.floor(
                    (sa.extract("epoch", h.hour) - start) / bucket_seconds
                )
                statements.append(
                    sa.select(
                        rolled_bucket.label("bucket"),
                        h.channel,
                        h.status,
                        sa.func.sum(h.deliveries).label("n"),
                    )
                    .where(plan.rolled_where(h.hour))
                    .group_by("bucket", h.channel, h.status)
                )
            if plan.raw:
                statements.append(
                    sa.select(
                        bucket.label("bucket"), d.channel, d.status, sa.func.count().label("n")
                    )
                    .where(plan.raw_where(d.created_at))
                    .group_by("bucket", d.channel, d.status)
                )
            for statement in statements:
                for row in connection.execute(statement):
                    counts[(int(row.bucket), row.channel, row.status)] += int(row.n)
        return [ActivityCount(*key, count) for key, count in sorted(counts.items())]

    def latency(self, since: datetime, until: datetime) -> dict[str, Percentiles]:
        """Delivery time percentiles of the deliveries created in [since, until) that were
        sent: per channel, and over all channels under the key ``"*"``.

        Measured from the event's ``occurred_at`` (when the dossier changed, by the TTHC
        system's clock) to ``sent_at`` (when a provider accepted the message); a
        negative time from a fast clock counts as zero. Exact when no hour of the range
        is rolled up; else estimated from the rollup's delivery-time buckets (each
        figure within its bucket's width, about 9%: see
        :mod:`notifier.store.deliveries.rollups`).
        """
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until)
            if plan.rolled:
                return self._estimated_latency(connection, plan)
            return self._exact_latency(connection, plan)

    def _exact_latency(self, connection: Any, plan: ReadPlan) -> dict[str, Percentiles]:
        d, e = deliveries.c, events.c
        joined = deliveries.join(events, d.event_id == e.event_id)
        where = (plan.raw_where(d.created_at), d.sent_at.is_not(None))
        if self.database.is_sqlite:
            seconds = (sa.func.julianday(d.sent_at) - sa.func.julianday(e.occurred_at)) * 86400.0
            samples: dict[str, list[float]] = defaultdict(list)
            statement = sa.select(d.channel, seconds.label("s")).select_from(joined).where(*where)
            for row in connection.execute(statement):
                samples[row.channel].append(float(row.s))
            result = {c: Percentiles.from_samples(v) for c, v in sorted(samples.items())}
            result["*"] = Percentiles.from_samples(v for vs in samples.values() for v in vs)
            return result
        seconds = sa.func.greatest(
            sa.extract("epoch", d.sent_at) - sa.extract("epoch", e.occurred_at), 0
        )
        quantiles = sa.func.percentile_cont(postgresql.array(PERCENTILES)).within_group(seconds)
        per_channel = (
            sa.select(d.channel, sa.func.count().label("n"), quantiles.label("q"))
            .select_from(joined)
            .where(*where)
            .group_by(d.channel)
            .order_by(d.channel)
        )
        overall = sa.select(sa.func.count().label("n"), quantiles.label("q")).select_from(joined)
        result = {
            row.channel: Percentiles.of(int(row.n), row.q)
            for row in connection.execute(per_channel)
        }
        row = connection.execute(overall.where(*where)).one()
        result["*"] = Percentiles.of(int(row.n), row.q)
        return result

    def _estimated_latency(self, connection: Any, plan: ReadPlan) -> dict[str, Percentiles]:
        """Percentiles from delivery-time buckets: the rollup's for rolled-up hours, the
        raw rows' (bucketed the same way) for the rest."""
        d, e, h = deliveries.c, events.c, delivery_latency_hours.c
        histograms: dict[str, Counter[int]] = defaultdict(Counter)
        rolled = (
            sa.select(h.channel, h.bucket, sa.func.sum(h.deliveries).label("n"))
            .where(plan.rolled_where(h.hour))
            .group_by(h.channel, h.bucket)
        )
        seconds = "greatest(date_part('epoch', deliveries.sent_at - events.occurred_at), 0)"
        raw = (
            sa.select(
                d.channel,
                sa.literal_column(bucket_sql(seconds)).label("bucket"),
                sa.func.count().label("n"),
            )
            .select_from(deliveries.join(events, d.event_id == e.event_id))
            .where(plan.raw_where(d.created_at), d.sent_at.is_not(None))
            .group_by(d.channel, "bucket")
        )
        for statement in (rolled, raw) if plan.raw else (rolled,):
            for row in connection.execute(statement):
                histograms[row.channel][int(row.bucket)] += int(row.n)
        result = {c: Percentiles.estimated(dict(v)) for c, v in sorted(histograms.items())}
        overall: Counter[int] = Counter()
        for histogram in histograms.values():
            overall.update(histogram)
        result["*"] = Percentiles.estimated(dict(overall))
        return result

    def grouped_counts(
        self, since: datetime, until: datetime, by: Sequence[str]
    ) -> list[tuple[tuple[str, ...], int]]:
        """Counts of deliveries created in [since, until), grouped by the named columns
        (any of agency_code, procedure_code, channel, status, provider, event_status)."""
        allowed = {*ROLLED_UP_COLUMNS, "event_status"}
        if not by or set(by) - allowed:
            raise ValueError(f"group by some of {sorted(allowed)}")
        counts: Counter[tuple[str, ...]] = Counter()
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until, hourly=set(by) <= ROLLED_UP_COLUMNS)
            statements = []
            if plan.rolled:
                rolled = [delivery_hours.c[name] for name in by]
                statements.append(
                    sa.select(*rolled, sa.func.sum(delivery_hours.c.deliveries))
                    .where(plan.rolled_where(delivery_hours.c.hour))
                    .group_by(*rolled)
                )
            if plan.raw:
                columns = [deliveries.c[name] for name in by]
                statements.append(
                    sa.select(*columns, sa.func.count())
                    .where(plan.raw_where(deliveries.c.created_at))
                    .group_by(*columns)
                )
            for statement in statements:
                for row in connection.execute(statement):
                    counts[tuple("" if v is None else str(v) for v in row[:-1])] += int(row[-1])
        return sorted(counts.items())

    def reason_counts(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[ReasonCount]:
        """Deliveries not sent because of a rule or a choice, by channel, kind and
        reason: ``suppressed`` (by ``suppressed_reason``), ``scheduled`` (held now, by
        ``hold_reason``) and ``held`` (held earlier, released since). Counted apart
        from failures. Created in [since, until) when given."""
        d, r = deliveries.c, delivery_reason_hours.c
        raw = (
            sa.select(
                d.channel, d.status, d.suppressed_reason, d.hold_reason, sa.func.count().label("n")
            )
            .where(sa.or_(d.status == DeliveryStatus.SUPPRESSED.value, d.hold_reason.is_not(None)))
            .group_by(d.channel, d.status, d.suppressed_reason, d.hold_reason)
        )
        rolled = sa.select(
            r.channel,
            r.status,
            sa.func.nullif(r.suppressed_reason, "").label("suppressed_reason"),
            sa.func.nullif(r.hold_reason, "").label("hold_reason"),
            sa.func.sum(r.deliveries).label("n"),
        ).group_by(r.channel, r.status, r.suppressed_reason, r.hold_reason)
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until)
            statements = plan.statements(rolled, r.hour, raw, d.created_at)
            for statement in statements:
                for row in connection.execute(statement):
                    if row.status == DeliveryStatus.SUPPRESSED.value:
                        kind, reason = "suppressed", row.suppressed_reason or "unspecified"
                    elif row.status == DeliveryStatus.SCHEDULED.value:
                        kind, reason = "scheduled", row.hold_reason
                    else:
                        kind, reason = "held", row.hold_reason
                    counts[(row.channel, kind, reason)] += int(row.n)
        return [ReasonCount(*key, count) for key, count in sorted(counts.items())]

    def events_count(self, since: datetime, until: datetime) -> int:
        """Dossier status events received in [since, until); the rows that only carry a
        reply to a citizen's message (status ``reply``) are not events."""
        total = 0
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until)
            if plan.rolled:
                total += int(
                    connection.execute(
                        sa.select(sa.func.coalesce(sa.func.sum(event_hours.c.events), 0)).where(
                            plan.rolled_where(event_hours.c.hour)
                        )
                    ).scalar_one()
                )
            if plan.raw:
                total += int(
                    connection.execute(
                        sa.select(sa.func.count()).where(
                            plan.raw_where(events.c.received_at),
                            events.c.status != REPLY_STATUS,
                        )
                    ).scalar_one()
                )
        return total

    def dead_letters_count(self, since: datetime, until: datetime) -> int:
        """Dead letters (permanent failures that used up their retries) among the
        deliveries created in [since, until)."""
        d, h = deliveries.c, delivery_hours.c
        failed = DeliveryStatus.PERMANENT_FAILURE.value
        total = 0
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until)
            if plan.rolled:
                total += int(
                    connection.execute(
                        sa.select(sa.func.coalesce(sa.func.sum(h.exhausted), 0)).where(
                            plan.rolled_where(h.hour), h.status == failed
                        )
                    ).scalar_one()
                )
            if plan.raw:
                total += int(
                    connection.execute(
                        sa.select(sa.func.count()).where(
                            plan.raw_where(d.created_at), d.status == failed, d.exhausted
                        )
                    ).scalar_one()
                )
        return total

    def rejects_count(self, since: datetime | None = None, until: datetime | None = None) -> int:
        statement = sa.select(sa.func.count()).select_from(rejected_events)
        if since is not None:
            statement = statement.where(rejected_events.c.received_at >= since)
        if until is not None:
            statement = statement.where(rejected_events.c.received_at < until)
        with self.database.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def dossier(self, dossier_code: str) -> DossierTimeline:
        """Every event of a dossier and every delivery, each with its attempt timeline."""
        e = events.c
        statement = (
            sa.select(
                e.event_id,
                e.received_at,
                e.occurred_at,
                e.source_system,
                e.agency_code,
                e.procedure_code,
                e.status,
            )
            .where(e.dossier_code == dossier_code)
            .order_by(e.occurred_at, e.received_at)
        )
        with self.database.engine.connect() as connection:
            found_events = [EventRow(**row._mapping) for row in connection.execute(statement)]
        rows = self.search(DeliveryQuery(dossier_code=dossier_code, limit=MAX_PAGE))
        rows.sort(key=lambda r: (r.created_at, r.channel))
        attempts = self.attempts_for([r.delivery_id for r in rows])
        return DossierTimeline(
            dossier_code,
            found_events,
            [DeliveryTimeline(r, attempts.get(r.delivery_id, [])) for r in rows],
        )

    def attempts_for(self, delivery_ids: Sequence[UUID]) -> dict[UUID, list[AttemptRow]]:
        if not delivery_ids:
            return {}
        a = delivery_attempts.c
        statement = (
            sa.select(a.delivery_id, *_attempt_columns())
            .where(a.delivery_id.in_(list(delivery_ids)))
            .order_by(a.attempt_id)
        )
        found: dict[UUID, list[AttemptRow]] = defaultdict(list)
        with self.database.engine.connect() as connection:
            for row in connection.execute(statement):
                values = dict(row._mapping)
                found[values.pop("delivery_id")].append(AttemptRow(**values))
        return dict(found)

    def fallbacks_of(self, delivery_ids: Sequence[UUID]) -> dict[UUID, list[DeliveryRow]]:
        """The fallback deliveries planned after each of these failed."""
        if not delivery_ids:
            return {}
        statement = _delivery_columns().where(deliveries.c.fallback_of.in_(list(delivery_ids)))
        found: dict[UUID, list[DeliveryRow]] = defaultdict(list)
        with self.database.engine.connect() as connection:
            for row in connection.execute(statement):
                delivery = DeliveryRow(**row._mapping)
                assert delivery.fallback_of is not None
                found[delivery.fallback_of].append(delivery)
        return dict(found)

    def provider_stats(self, since: datetime) -> list[ProviderStat]:
        """Send outcomes per provider since ``since``, from the attempt log (one row per
        attempt: a provider skipped by failover within an attempt is not counted)."""
        a, d = delivery_attempts.c, deliveries.c
        statement = (
            sa.select(
                a.provider,
                d.channel,
                a.outcome,
                sa.func.count().label("n"),
                sa.func.max(a.finished_at).label("last"),
            )
            .select_from(delivery_attempts.join(deliveries, a.delivery_id == d.delivery_id))
            .where(
                a.finished_at >= since,
                a.provider.is_not(None),
                a.outcome.in_(_SEND_OUTCOMES),
            )
            .group_by(a.provider, d.channel, a.outcome)
        )
        folded: dict[tuple[str, str], dict[str, Any]] = {}
        with self.database.engine.connect() as connection:
            for row in connection.execute(statement):
                item = folded.setdefault((row.provider, row.channel), {"last": None})
                item[row.outcome] = int(row.n)
                last = row.last  # max() keeps the column's type: aware UTC datetimes
                if last is not None and (item["last"] is None or last > item["last"]):
                    item["last"] = last
        return [
            ProviderStat(
                provider=provider,
                channel=channel,
                ok=item.get(DeliveryStatus.SENT, 0) + item.get(DeliveryStatus.DELIVERED, 0),
                temporary_failures=item.get(DeliveryStatus.TEMPORARY_FAILURE, 0),
                permanent_failures=item.get(DeliveryStatus.PERMANENT_FAILURE, 0),
                last_attempt_at=item["last"],
            )
            for (provider, channel), item in sorted(folded.items())
        ]

    def provider_health(self, now: datetime | None = None) -> list[ProviderHealthRow]:
        """Each provider's health from what workers recorded: the circuit state derived
        from the latest outcomes (see :func:`notifier.store.health.shown_circuit_state`),
        rate limits, quota."""
        now = now or utcnow()
        h = provider_health.c
        statement = sa.select(provider_health).order_by(h.channel, h.provider)
        with self.database.engine.connect() as connection:
            rows = [row._mapping for row in connection.execute(statement)]
        found = []
        for m in rows:
            state = shown_circuit_state(
                m["circuit_state"],
                opened_at=m["opened_at"],
                open_until=m["open_until"],
                last_success_at=m["last_success_at"],
                updated_at=m["updated_at"],
                now=now,
            )
            closed = state is CircuitState.CLOSED
            found.append(
                ProviderHealthRow(
                    provider=m["provider"],
                    channel=m["channel"],
                    circuit_state=state.value,
                    # A circuit closed by a later success has no failures in a row left.
                    consecutive_failures=0 if closed else m["consecutive_failures"],
                    open_until=None if closed else m["open_until"],
                    last_error=m["last_error"],
                    details=m["details"],
                    updated_at=m["updated_at"],
                    last_success_at=m["last_success_at"],
                    last_failure_at=m["last_failure_at"],
                )
            )
        return found

    def dossier_code_of(self, delivery_id: UUID) -> str | None:
        statement = sa.select(deliveries.c.dossier_code).where(
            deliveries.c.delivery_id == delivery_id
        )
        with self.database.engine.connect() as connection:
            code: str | None = connection.execute(statement).scalar_one_or_none()
        return code


def _delivery_columns() -> Any:
    d = deliveries.c
    return sa.select(
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
        d.procedure_code,
        d.fallback_of,
        d.due_at,
        d.hold_reason,
        d.suppressed_reason,
    )


def _attempt_columns() -> list[Any]:
    a = delivery_attempts.c
    return [
        a.number,
        a.provider,
        a.started_at,
        a.finished_at,
        a.outcome,
        a.error,
        a.error_code,
        a.provider_message_id,
    ]
