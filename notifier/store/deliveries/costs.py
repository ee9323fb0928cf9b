"""The delivery log's cost figures: what deliveries cost per agency, procedure, channel and
month, SMS segments, superseded (coalesced) deliveries, and each agency's spend this
month against its budget. Read from the one cost column set of ``deliveries``
(``cost_vnd``, ``segments``, ``cost_source``), shared by reports, console and metrics.

Months are calendar months in a time zone (Vietnam by default): each month of a range
is one query bounded by its UTC instants, so the figures are the same on SQLite and
PostgreSQL and any zone's daylight saving is honoured.

On PostgreSQL the whole settled hours are read from the hourly rollup (``delivery_hours``,
:mod:`notifier.store.deliveries.rollups`) and only the rest from the raw rows: the
budget gate and ``/metrics`` read this month's spend without scanning the month.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.deliveries.rollups import Rollups
from notifier.store.schema import deliveries, delivery_hours

SMS = "sms"


@dataclass(frozen=True)
class CostRow:
    """Deliveries created in one month for one agency, procedure and channel."""

    month: str  # YYYY-MM in the report's zone
    agency_code: str
    procedure_code: str
    channel: str
    deliveries: int  # all of them, superseded included
    charged: int  # those with a cost recorded
    superseded: int  # coalesced away: never sent, never charged
    segments: int  # SMS segments billed
    cost_vnd: Decimal
    reported_vnd: Decimal  # the part of cost_vnd the providers reported themselves


@dataclass(frozen=True)
class SegmentFigure:
    """An agency's SMS: how many had segments recorded, and their average."""

    sms: int
    segments: int

    @property
    def average(self) -> float | None:
        return None if self.sms == 0 else self.segments / self.sms


def month_start(moment: datetime, tz: tzinfo) -> datetime:
    """Midnight on the 1st of ``moment``'s month in ``tz``, in UTC."""
    local = moment.astimezone(tz)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def next_month(start: datetime, tz: tzinfo) -> datetime:
    """The start of the month after the one ``start`` (a month start, UTC) begins."""
    local = start.astimezone(tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime(year, month, 1, tzinfo=tz).astimezone(UTC)


def months(
    since: datetime, until: datetime, tz: tzinfo
) -> Iterator[tuple[str, datetime, datetime]]:
    """(YYYY-MM, start, end) of each month that meets [since, until), clipped to it."""
    start = month_start(since, tz)
    while start < until:
        end = next_month(start, tz)
        yield start.astimezone(tz).strftime("%Y-%m"), max(start, since), min(end, until)
        start = end


def _money(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))


class CostLog:
    """Cost figures from the delivery log."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def by_month(self, since: datetime, until: datetime, tz: tzinfo) -> list[CostRow]:
        """Per month, agency, procedure and channel, deliveries created in [since, until)."""
        d, h = deliveries.c, delivery_hours.c
        superseded = DeliveryStatus.SUPERSEDED.value
        raw = sa.select(
            d.agency_code,
            d.procedure_code,
            d.channel,
            sa.func.count().label("n"),
            sa.func.count(d.cost_vnd).label("charged"),
            sa.func.sum(sa.case((d.status == superseded, 1), else_=0)).label("superseded"),
            sa.func.coalesce(sa.func.sum(d.segments), 0).label("segments"),
            sa.func.sum(d.cost_vnd).label("cost"),
            sa.func.sum(sa.case((d.cost_source == "reported", d.cost_vnd), else_=None)).label(
                "reported"
            ),
        ).group_by(d.agency_code, d.procedure_code, d.channel)
        rolled = sa.select(
            h.agency_code,
            h.procedure_code,
            h.channel,
            sa.func.sum(h.deliveries).label("n"),
            sa.func.sum(h.charged).label("charged"),
            sa.func.sum(sa.case((h.status == superseded, h.deliveries), else_=0)).label(
                "superseded"
            ),
            sa.func.sum(h.segments).label("segments"),
            sa.func.sum(h.cost_vnd).label("cost"),
            sa.func.sum(h.reported_vnd).label("reported"),
        ).group_by(h.agency_code, h.procedure_code, h.channel)
        rows: list[CostRow] = []
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            for month, start, end in months(since, until, tz):
                plan = rollups.plan(connection, start, end)
                statements = plan.statements(rolled, h.hour, raw, d.created_at)
                sums: dict[tuple[str, str, str], list[Any]] = defaultdict(
                    lambda: [0, 0, 0, 0, Decimal(0), Decimal(0)]
                )
                for statement in statements:
                    for row in connection.execute(statement):
                        item = sums[(row.agency_code, row.procedure_code, row.channel)]
                        item[0] += int(row.n)
                        item[1] += int(row.charged or 0)
                        item[2] += int(row.superseded or 0)
                        item[3] += int(row.segments or 0)
                        item[4] += _money(row.cost)
                        item[5] += _money(row.reported)
                for (agency, procedure, channel), item in sorted(sums.items()):
                    rows.append(
                        CostRow(
                            month=month,
                            agency_code=agency,
                            procedure_code=procedure,
                            channel=channel,
                            deliveries=item[0],
                            charged=item[1],
                            superseded=item[2],
                            segments=item[3],
                            cost_vnd=item[4],
                            reported_vnd=item[5],
                        )
                    )
        return rows

    def sms_segments(self, since: datetime, until: datetime) -> dict[str, SegmentFigure]:
        """Per agency, the SMS sent in [since, until) with segments recorded."""
        d, h = deliveries.c, delivery_hours.c
        raw = (
            sa.select(
                d.agency_code,
                sa.func.count(d.segments).label("sms"),
                sa.func.coalesce(sa.func.sum(d.segments), 0).label("segments"),
            )
            .where(d.channel == SMS, d.segments.is_not(None))
            .group_by(d.agency_code)
        )
        rolled = (
            sa.select(
                h.agency_code,
                sa.func.sum(h.segmented).label("sms"),
                sa.func.sum(h.segments).label("segments"),
            )
            .where(h.channel == SMS, h.segmented > 0)
            .group_by(h.agency_code)
        )
        found: dict[str, tuple[int, int]] = {}
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until)
            statements = plan.statements(rolled, h.hour, raw, d.created_at)
            for statement in statements:
                for row in connection.execute(statement):
                    sms, segments = found.get(row.agency_code, (0, 0))
                    found[row.agency_code] = (sms + int(row.sms), segments + int(row.segments))
        return {agency: SegmentFigure(*found[agency]) for agency in sorted(found)}

    def spend(
        self, since: datetime, until: datetime, agencies: Sequence[str] | None = None
    ) -> dict[tuple[str, str], Decimal]:
        """What (agency, channel) deliveries created in [since, until) cost."""
        d, h = deliveries.c, delivery_hours.c
        raw = (
            sa.select(d.agency_code, d.channel, sa.func.sum(d.cost_vnd).label("cost"))
            .where(d.cost_vnd.is_not(None))
            .group_by(d.agency_code, d.channel)
        )
        rolled = (
            sa.select(h.agency_code, h.channel, sa.func.sum(h.cost_vnd).label("cost"))
            .where(h.charged > 0)
            .group_by(h.agency_code, h.channel)
        )
        if agencies is not None:
            raw = raw.where(d.agency_code.in_(list(agencies)))
            rolled = rolled.where(h.agency_code.in_(list(agencies)))
        spent: dict[tuple[str, str], Decimal] = {}
        rollups = Rollups(self.database)
        with rollups.reading() as connection:
            plan = rollups.plan(connection, since, until)
            statements = plan.statements(rolled, h.hour, raw, d.created_at)
            for statement in statements:
                for row in connection.execute(statement):
                    key = (row.agency_code, row.channel)
                    spent[key] = spent.get(key, Decimal(0)) + _money(row.cost)
        return spent
