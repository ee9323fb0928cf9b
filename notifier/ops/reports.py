"""Delivery reports for a day or a range: the figures item 20 of letter 3109/BTTTT-CĐSQG
asks TTHC systems to feed to the national monitoring and measurement system.

A report covers the deliveries *created* (planned from an accepted event) in
``[since, until)``: counts per agency, procedure, channel and status, and delivery
time percentiles per channel, measured from the event's ``occurred_at`` to the
delivery's ``sent_at`` (see :meth:`notifier.store.deliveries.log.DeliveryLog.latency`).
It also says what the deliveries cost (VND, per agency, procedure, channel and month:
the providers' reported charges where they report them, our price table's estimates
elsewhere; see :mod:`notifier.costs`), how many were superseded by coalescing (never
sent, never charged) and the average SMS segments per agency.
Dates without a time are midnights in the report's time zone (Vietnam by default).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.store.deliveries.costs import CostLog, CostRow, SegmentFigure
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.deliveries.log import DeliveryLog, Percentiles, ReasonCount
from notifier.store.schema import utcnow

DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
GROUPING = ("agency_code", "procedure_code", "channel", "status")
CSV_COLUMNS = (
    "from",
    "to",
    "kind",
    "agency_code",
    "procedure_code",
    "channel",
    "status",
    "count",
    "p50_s",
    "p90_s",
    "p95_s",
    "p99_s",
    # kind "cost": one row per month, agency, procedure and channel; "sms_segments": per
    # agency, count = SMS with segments recorded.
    "month",
    "segments",
    "cost_vnd",
)
MAX_RANGE = timedelta(days=366)


class ReportError(ValueError):
    """A report that cannot be made as asked, with a message fit to show."""


def zone(name: str | None) -> tzinfo:
    """A time zone by IANA name; Vietnam (UTC+7, no daylight saving) if the system has
    no zone data for it."""
    name = name or DEFAULT_TIMEZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if name == DEFAULT_TIMEZONE:
            return timezone(timedelta(hours=7), "ICT")
        raise ReportError(f"unknown time zone {name!r}") from None


def parse_moment(text: str, tz: tzinfo) -> tuple[datetime, bool]:
    """An ISO date or date-time; naive values are in ``tz``. Returns (moment, is_date)."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=tz), True
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"not an ISO date or date-time: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=tz)), False


DEFAULT_REPORT_DAYS = 30


def default_report_days(today: date, days: int = DEFAULT_REPORT_DAYS) -> tuple[str, str]:
    """The range a report opens on: the last ``days`` days, today included, as the ISO
    dates of its first day and of its end (excluded: tomorrow)."""
    return (today - timedelta(days=days - 1)).isoformat(), (today + timedelta(days=1)).isoformat()


def report_range(
    since: str | None, until: str | None, day: str | None, tz: tzinfo
) -> tuple[datetime, datetime]:
    """[since, until) in UTC from a day, or from a start and an optional end (a day after
    a start date, else now)."""
    if day is not None:
        if since is not None or until is not None:
            raise ReportError("give either a day or a from/to range, not both")
        start, is_date = parse_moment(day, tz)
        if not is_date:
            raise ReportError("a day is a date, e.g. 2026-11-26")
        return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)
    if since is None:
        raise ReportError("give --from (and optionally --to) or --day")
    start, is_date = parse_moment(since, tz)
    if until is not None:
        end, _ = parse_moment(until, tz)
    else:
        end = start + timedelta(days=1) if is_date else utcnow()
    if end <= start:
        raise ReportError("the end of the range must be after its start")
    if end - start > MAX_RANGE:
        raise ReportError("a report covers at most 366 days")
    return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True)
class ReportRow:
    agency_code: str
    procedure_code: str
    channel: str
    status: str
    count: int


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    timezone: str
    generated_at: datetime
    events: int
    rejected_events: int
    rows: list[ReportRow]
    latency: dict[str, Percentiles]  # per channel, and "*" for all
    # Held or suppressed by a rule or the citizen's choice, per reason (not failures).
    reasons: list[ReasonCount] = field(default_factory=list)

    def reason_totals(self) -> dict[str, int]:
        """``kind:reason`` -> count over every channel, e.g. ``suppressed:channel_off``."""
        counts: Counter[str] = Counter()
        for r in self.reasons:
            counts[f"{r.kind}:{r.reason}"] += r.count
        return dict(sorted(counts.items()))
    costs: list[CostRow] = field(default_factory=list)
    sms_segments: dict[str, SegmentFigure] = field(default_factory=dict)

    @property
    def superseded(self) -> int:
        """Deliveries coalesced away: a later status was sent in their place."""
        return sum(r.count for r in self.rows if r.status == DeliveryStatus.SUPERSEDED)

    @property
    def cost_vnd(self) -> Decimal:
        return sum((r.cost_vnd for r in self.costs), Decimal(0))

    def cost_totals(self, key: str) -> dict[str, str]:
        """Cost per value of ``key`` (agency_code, procedure_code, channel, month), as
        decimal strings (JSON has no exact decimals)."""
        totals: dict[str, Decimal] = {}
        for row in self.costs:
            value = getattr(row, key)
            totals[value] = totals.get(value, Decimal(0)) + row.cost_vnd
        return {k: _vnd(v) for k, v in sorted(totals.items())}

    @property
    def deliveries(self) -> int:
        return sum(r.count for r in self.rows)

    def totals(self, key: str) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for row in self.rows:
            counts[getattr(row, key)] += row.count
        return dict(sorted(counts.items()))

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.since.isoformat(),
            "to": self.until.isoformat(),
            "timezone": self.timezone,
            "generated_at": self.generated_at.isoformat(),
            "delivery_time": "seconds from the event's occurred_at to the delivery's sent_at",
            "events": self.events,
            "rejected_events": self.rejected_events,
            "deliveries": self.deliveries,
            "by_agency": self.totals("agency_code"),
            "by_procedure": self.totals("procedure_code"),
            "by_channel": self.totals("channel"),
            "by_status": self.totals("status"),
            "rows": [row.__dict__ for row in self.rows],
            "by_reason": self.reason_totals(),
            "reasons": [r.__dict__ for r in self.reasons],
            "latency": {
                channel: {"sent": p.count, "p50": p.p50, "p90": p.p90, "p95": p.p95, "p99": p.p99}
                for channel, p in self.latency.items()
            },
            "superseded": self.superseded,
            "cost": {
                "currency": "VND",
                "timezone_of_months": self.timezone,
                "total_vnd": _vnd(self.cost_vnd),
                "reported_vnd": _vnd(sum((r.reported_vnd for r in self.costs), Decimal(0))),
                "by_agency": self.cost_totals("agency_code"),
                "by_procedure": self.cost_totals("procedure_code"),
                "by_channel": self.cost_totals("channel"),
                "by_month": self.cost_totals("month"),
                "rows": [
                    {
                        "month": r.month,
                        "agency_code": r.agency_code,
                        "procedure_code": r.procedure_code,
                        "channel": r.channel,
                        "deliveries": r.deliveries,
                        "charged": r.charged,
                        "superseded": r.superseded,
                        "segments": r.segments,
                        "cost_vnd": _vnd(r.cost_vnd),
                        "reported_vnd": _vnd(r.reported_vnd),
                    }
                    for r in self.costs
                ],
            },
            "sms_segments": {
                agency: {"sms": f.sms, "segments": f.segments, "average": f.average}
                for agency, f in self.sms_segments.items()
            },
        }

    def as_csv(self) -> str:
        """One flat table: ``kind`` is count (one row per agency, procedure, channel and
        status), latency (per channel, ``*`` for all), events or rejected_events."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        span = (self.since.isoformat(), self.until.isoformat())
        writer.writerow([*span, "events", "", "", "", "", self.events, "", "", "", "", "", "", ""])
        writer.writerow([*span, "rejected_events", "", "", "", "", self.rejected_events, *[""] * 7])
        for row in self.rows:
            writer.writerow(
                [
                    *span,
                    "count",
                    row.agency_code,
                    row.procedure_code,
                    row.channel,
                    row.status,
                    row.count,
                    *[""] * 7,
                ]
            )
        for r in self.reasons:
            writer.writerow(
                [*span, "reason", "", "", r.channel, f"{r.kind}:{r.reason}", r.count]
                + [""] * 7
            )
        for channel, p in self.latency.items():
            writer.writerow(
                [
                    *span,
                    "latency",
                    "",
                    "",
                    channel,
                    "",
                    p.count,
                    *("" if v is None else f"{v:.3f}" for v in (p.p50, p.p90, p.p95, p.p99)),
                    "",
                    "",
                    "",
                ]
            )
        for c in self.costs:
            writer.writerow(
                [
                    *span,
                    "cost",
                    c.agency_code,
                    c.procedure_code,
                    c.channel,
                    "",
                    c.deliveries,
                    *[""] * 4,
                    c.month,
                    c.segments,
                    _vnd(c.cost_vnd),
                ]
            )
        for agency, figure in self.sms_segments.items():
            writer.writerow(
                [*span, "sms_segments", agency, "", "sms", "", figure.sms]
                + [""] * 5
                + [figure.segments, ""]
            )
        return out.getvalue()


def _vnd(amount: Decimal) -> str:
    """An amount of dong as text: whole dong without decimals, else two."""
    return f"{amount:.0f}" if amount == amount.to_integral_value() else f"{amount:.2f}"


def build_report(
    log: DeliveryLog, since: datetime, until: datetime, *, timezone_name: str | None = None
) -> Report:
    rows = [
        ReportRow(agency, procedure, channel, status, count)
        for (agency, procedure, channel, status), count in log.grouped_counts(
            since, until, GROUPING
        )
    ]
    return Report(
        since=since,
        until=until,
        timezone=timezone_name or DEFAULT_TIMEZONE,
        generated_at=utcnow(),
        events=log.events_count(since, until),
        rejected_events=log.rejects_count(since, until),
        rows=rows,
        latency=log.latency(since, until),
        reasons=log.reason_counts(since, until),
        costs=CostLog(log.database).by_month(since, until, zone(timezone_name)),
        sms_segments=CostLog(log.database).sms_segments(since, until),
    )
