"""The rules around a citizen's choice, read from ``config/routing.toml``: quiet hours
(Vietnam time, per channel, per agency), frequency caps per recipient and channel, and
which statuses are mandatory (sent whatever the citizen chose) or urgent (never held).

Pure data and time arithmetic; planning (:mod:`notifier.pipeline.planning`) and the
send-time gate (:mod:`notifier.pipeline.gate`) apply them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def parse_clock(value: object, where: str) -> time:
    """``"21:00"`` as a time of day; ValueError naming ``where`` otherwise."""
    if not isinstance(value, str) or (match := _CLOCK.fullmatch(value)) is None:
        raise ValueError(f'{where} must be a time of day as HH:MM (e.g. "21:00")')
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class QuietHours:
    """A nightly window in Vietnam time in which deliveries on ``channels`` are held to
    its end. ``start`` after ``end`` crosses midnight (the default 21:00-07:00)."""

    start: time = time(21, 0)
    end: time = time(7, 0)
    channels: frozenset[str] = frozenset({"sms", "zalo"})

    def ends_after(self, now: datetime) -> datetime | None:
        """When the window ``now`` falls in ends (UTC), or None outside it."""
        local = now.astimezone(VIETNAM)
        at = local.time().replace(tzinfo=None)
        day = local.date()
        if self.start == self.end:
            return None  # an empty window: quiet hours off
        if self.start < self.end:
            inside = self.start <= at < self.end
            end_day = day
        else:  # across midnight
            inside = at >= self.start or at < self.end
            end_day = day + timedelta(days=1) if at >= self.start else day
        if not inside:
            return None
        return datetime.combine(end_day, self.end, tzinfo=VIETNAM).astimezone(UTC)


class OverCap(StrEnum):
    """What happens to a delivery over its frequency cap."""

    HOLD = "hold"  # held to the next slot the cap allows
    SUPPRESS = "suppress"  # not sent (kept, with the reason)


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``per_hour`` and ``per_day`` deliveries to one recipient on the channel
    (rolling windows), and one copy of identical content within ``identical_within``."""

    per_hour: int | None = None
    per_day: int | None = None
    over: OverCap = OverCap.HOLD
    identical_within: timedelta | None = timedelta(hours=1)

    def next_slot(
        self, now: datetime, hour: list[datetime], day: list[datetime]
    ) -> datetime | None:
        """None when one more delivery fits now; else when the next one fits, given
        the times the recipient's deliveries were counted in the last hour and day."""
        due = now
        if self.per_hour is not None and len(hour) >= self.per_hour:
            # The cap frees a slot when the oldest of the last per_hour counted ages out.
            due = max(due, sorted(hour)[len(hour) - self.per_hour] + timedelta(hours=1))
        if self.per_day is not None and len(day) >= self.per_day:
            due = max(due, sorted(day)[len(day) - self.per_day] + timedelta(days=1))
        return None if due == now else due


@dataclass(frozen=True)
class Choices:
    """The deployment's rules (defaults, with per-agency overrides)."""

    mandatory: frozenset[str] = frozenset()
    urgent: frozenset[str] = frozenset()
    quiet_hours: QuietHours = QuietHours()
    caps: dict[str, FrequencyCap] | None = None
    agency_mandatory: dict[str, frozenset[str]] | None = None
    agency_urgent: dict[str, frozenset[str]] | None = None
    agency_quiet_hours: dict[str, QuietHours] | None = None

    def is_mandatory(self, agency: str, status: str) -> bool:
        return status in (self.agency_mandatory or {}).get(agency, self.mandatory)

    def is_urgent(self, agency: str, status: str) -> bool:
        return status in (self.agency_urgent or {}).get(agency, self.urgent)

    def quiet_hours_for(self, agency: str) -> QuietHours:
        return (self.agency_quiet_hours or {}).get(agency, self.quiet_hours)

    def cap_for(self, channel: str) -> FrequencyCap | None:
        return (self.caps or {}).get(channel)


def parse_quiet_hours(table: object, where: str, default: QuietHours) -> QuietHours:
    """A ``[quiet_hours]`` table (start, end, channels), missing keys from ``default``."""
    if not isinstance(table, dict):
        raise ValueError(f"[{where}] must be a table with start, end and channels")
    unknown = set(table) - {"start", "end", "channels"}
    if unknown:
        raise ValueError(f"[{where}] has unknown keys: {', '.join(sorted(unknown))}")
    channels = table.get("channels", sorted(default.channels))
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ValueError(f"[{where}] channels must be a list of channel names")
    return QuietHours(
        start=parse_clock(table["start"], f"[{where}] start")
        if "start" in table
        else default.start,
        end=parse_clock(table["end"], f"[{where}] end") if "end" in table else default.end,
        channels=frozenset(channels),
    )


def parse_cap(table: object, where: str) -> FrequencyCap:
    """A ``[frequency_caps.<channel>]`` table."""
    if not isinstance(table, dict):
        raise ValueError(f"[{where}] must be a table")
    unknown = set(table) - {"per_hour", "per_day", "over", "identical_within_minutes"}
    if unknown:
        raise ValueError(f"[{where}] has unknown keys: {', '.join(sorted(unknown))}")
    counts: dict[str, int | None] = {}
    for key in ("per_hour", "per_day"):
        value = table.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"[{where}] {key} must be a whole number of at least 1")
        counts[key] = value
    over = table.get("over", OverCap.HOLD.value)
    if over not in {o.value for o in OverCap}:
        raise ValueError(f'[{where}] over must be "hold" or "suppress"')
    minutes = table.get("identical_within_minutes", 60)
    if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 0:
        raise ValueError(f"[{where}] identical_within_minutes must be a whole number (0: off)")
    return FrequencyCap(
        per_hour=counts["per_hour"],
        per_day=counts["per_day"],
        over=OverCap(over),
        identical_within=timedelta(minutes=minutes) if minutes else None,
    )
