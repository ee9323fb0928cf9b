"""The delivery log's cost figures: what deliveries cost per agency, procedure, channel and
month, SMS segments, superseded (coalesced) deliveries, and each agency's spend this
month against its budget. Read from the one cost column set of ``deliveries``
(``cost_vnd``, ``segments``, ``cost_source``), shared by reports, console and metrics.

Months are calendar months in a time zone (Vietnam by default): each month of a range
is one query bounded by its UTC instants, so the figures are the same on SQLite and
PostgreSQL and any zone's daylight saving is honoured.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.schema import deliveries

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
        d = deliveries.c
        superseded = d.status == DeliveryStatus.SUPERSEDED.value
        statement = (
            sa.select(
                d.agency_code,
                d.procedure_code,
                d.channel,
                sa.func.count().label("n"),
                sa.func.count(d.cost_vnd).label("charged"),
                sa.func.sum(sa.case((superseded, 1), else_=0)).label("superseded"),
                sa.func.coalesce(sa.func.sum(d.segments), 0).label("segments"),
                sa.func.sum(d.cost_vnd).label("cost"),
                sa.func.sum(sa.case((d.cost_source == "reported", d.cost_vnd), else_=None)).label(
                    "reported"
                ),
            )
            .where(d.created_at >= sa.bindparam("since"), d.created_at < sa.bindparam("until"))
            .group_by(d.agency_code, d.procedure_code, d.channel)
            .order_by(d.agency_code, d.procedure_code, d.channel)
        )
        rows: list[CostRow] = []
        with self.database.engine.connect() as connection:
            for month, start, end in months(since, until, tz):
                for row in connection.execute(statement, {"since": start, "until": end}):
                    rows.append(
                        CostRow(
                            month=month,
                            agency_code=row.agency_code,
                            procedure_code=row.procedure_code,
                            channel=row.channel,
                            deliveries=int(row.n),
                            charged=int(row.charged),
                            superseded=int(row.superseded or 0),
                            segments=int(row.segments or 0),
                            cost_vnd=_money(row.cost),
                            reported_vnd=_money(row.reported),
                        )
                    )
        return rows

    def sms_segments(self, since: datetime, until: datetime) -> dict[str, SegmentFigure]:
        """Per agency, the SMS sent in [since, until) with segments recorded."""
        d = deliveries.c
        statement = (
            sa.select(
                d.agency_code,
                sa.func.count(d.segments).label("sms"),
                sa.func.coalesce(sa.func.sum(d.segments), 0).label("segments"),
            )
            .where(
                d.channel == SMS,
                d.segments.is_not(None),
                d.created_at >= since,
                d.created_at < until,
            )
            .group_by(d.agency_code)
            .order_by(d.agency_code)
        )
        with self.database.engine.connect() as connection:
            return {
                row.agency_code: SegmentFigure(int(row.sms), int(row.segments))
                for row in connection.execute(statement)
            }

    def spend(
        self, since: datetime, until: datetime, agencies: Sequence[str] | None = None
    ) -> dict[tuple[str, str], Decimal]:
        """What (agency, channel) deliveries created in [since, until) cost."""
        d = deliveries.c
        statement = (
            sa.select(d.agency_code, d.channel, sa.func.sum(d.cost_vnd).label("cost"))
            .where(d.created_at >= since, d.created_at < until, d.cost_vnd.is_not(None))
            .group_by(d.agency_code, d.channel)
        )
        if agencies is not None:
            statement = statement.where(d.agency_code.in_(list(agencies)))
        with self.database.engine.connect() as connection:
            return {
                (row.agency_code, row.channel): _money(row.cost)
                for row in connection.execute(statement)
            }
