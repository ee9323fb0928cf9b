"""What the console shows, as plain data: one layer under the HTML pages, the JSON
API and the CLI commands, so all three answer from the same queries."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.deliveries.log import (
    DeliveryLog,
    DeliveryQuery,
    DeliveryRow,
    DossierTimeline,
    Percentiles,
    ProviderHealthRow,
    ProviderStat,
)
from notifier.store.health import CircuitState
from notifier.store.schema import utcnow
from notifier.web.console.i18n import LOCAL_ZONE

WINDOWS = ("hour", "day", "month")
OK_STATUSES = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED)
IN_FLIGHT = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.TEMPORARY_FAILURE)
DEAD_LETTER_KINDS = ("exhausted", "permanent", "temporary")


@dataclass(frozen=True)
class Window:
    """A time window cut into equal buckets; the last bucket holds "now"."""

    name: str
    start: datetime
    bucket_seconds: int
    buckets: int

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.bucket_seconds * self.buckets)

    def bucket_start(self, index: int) -> datetime:
        return self.start + timedelta(seconds=self.bucket_seconds * index)

    def labels(self) -> list[str]:
        fmt = {"hour": "%H:%M", "day": "%H:00", "month": "%d/%m"}[self.name]
        return [
            self.bucket_start(i).astimezone(LOCAL_ZONE).strftime(fmt) for i in range(self.buckets)
        ]


def window(name: str, now: datetime | None = None) -> Window:
    """Last hour in 5-minute buckets, last day in hours, last 30 days in local days."""
    now = (now or utcnow()).astimezone(UTC)
    if name == "hour":
        aligned = now.replace(second=0, microsecond=0)
        aligned -= timedelta(minutes=aligned.minute % 5)
        return Window(name, aligned - timedelta(minutes=55), 300, 12)
    if name == "day":
        aligned = now.replace(minute=0, second=0, microsecond=0)
        return Window(name, aligned - timedelta(hours=23), 3600, 24)
    if name == "month":
        local = now.astimezone(LOCAL_ZONE).replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(name, (local - timedelta(days=29)).astimezone(UTC), 86400, 30)
    raise ValueError(f"window is one of {', '.join(WINDOWS)}")


@dataclass
class Overview:
    window: Window
    labels: list[str]
    by_channel: dict[str, dict[str, int]]
    by_status: dict[str, int]
    series_by_status: dict[str, list[int]]
    series_by_channel: dict[str, list[int]]
    failures_by_channel: dict[str, list[int]]
    latency: dict[str, Percentiles]
    rejected_events: int
    dead_letters: int
    open_circuits: int
    total: int = 0
    sent: int = 0
    failed: int = 0
    in_flight: int = 0
    channel_failure_rates: dict[str, float | None] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float | None:
        return rate(self.failed, self.sent)

    def as_json(self) -> dict[str, Any]:
        return {
            "window": self.window.name,
            "from": self.window.start.isoformat(),
            "to": self.window.end.isoformat(),
            "bucket_seconds": self.window.bucket_seconds,
            "buckets": [self.window.bucket_start(i).isoformat() for i in range(len(self.labels))],
            "total": self.total,
            "sent": self.sent,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "failure_rate": self.failure_rate,
            "median_seconds_event_to_sent": self.latency.get("*", Percentiles(0)).p50,
            "rejected_events": self.rejected_events,
            "dead_letters": self.dead_letters,
            "open_circuits": self.open_circuits,
            "by_channel": self.by_channel,
            "by_status": self.by_status,
            "series_by_status": self.series_by_status,
            "series_by_channel": self.series_by_channel,
            "failures_by_channel": self.failures_by_channel,
            "channel_failure_rates": self.channel_failure_rates,
            "latency": {k: p.__dict__ for k, p in self.latency.items()},
        }


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready values: datetimes as ISO 8601, UUIDs as strings."""
    return {
        k: v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, UUID) else v
        for k, v in values.items()
    }


def dossier_json(timeline: DossierTimeline) -> dict[str, Any]:
    return {
        "dossier_code": timeline.dossier_code,
        "events": [plain(e.__dict__) for e in timeline.events],
        "deliveries": [
            {**d.delivery.as_json(), "attempts": [plain(a.__dict__) for a in d.attempts]}
            for d in timeline.deliveries
        ],
    }


def rate(failed: int, ok: int) -> float | None:
    """Permanent failures over finished sends (None when nothing finished)."""
    finished = failed + ok
    return None if not finished else failed / finished


def overview(log: DeliveryLog, name: str, now: datetime | None = None) -> Overview:
    w = window(name, now)
    n = w.buckets
    by_channel: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_status: dict[str, int] = defaultdict(int)
    series_by_status: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    series_by_channel: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    failures_by_channel: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    for item in log.activity(w.start, w.end, w.bucket_seconds):
        if not 0 <= item.bucket < n:
            continue
        by_channel[item.channel][item.status] += item.count
        by_status[item.status] += item.count
        series_by_status[item.status][item.bucket] += item.count
        series_by_channel[item.channel][item.bucket] += item.count
        if item.status == DeliveryStatus.PERMANENT_FAILURE:
            failures_by_channel[item.channel][item.bucket] += item.count
    for channel in series_by_channel:
        failures_by_channel.setdefault(channel, [0] * n)
    health = log.provider_health()
    result = Overview(
        window=w,
        labels=w.labels(),
        by_channel={c: dict(s) for c, s in sorted(by_channel.items())},
        by_status=dict(by_status),
        series_by_status=dict(series_by_status),
        series_by_channel=dict(sorted(series_by_channel.items())),
        failures_by_channel=dict(failures_by_channel),
        latency=log.latency(w.start, w.end),
        rejected_events=log.rejects_count(w.start, w.end),
        dead_letters=log.dead_letters_count(w.start, w.end),
        open_circuits=sum(1 for h in health if h.circuit_state != CircuitState.CLOSED),
    )
    result.total = sum(by_status.values())
    result.sent = sum(by_status.get(s, 0) for s in OK_STATUSES)
    result.failed = by_status.get(DeliveryStatus.PERMANENT_FAILURE, 0)
    result.in_flight = sum(by_status.get(s, 0) for s in IN_FLIGHT)
    result.channel_failure_rates = {
        channel: rate(
            statuses.get(DeliveryStatus.PERMANENT_FAILURE, 0),
            sum(statuses.get(s, 0) for s in OK_STATUSES),
        )
        for channel, statuses in result.by_channel.items()
    }
    return result


def dead_letter_query(
    kind: str,
    *,
    channel: str | None = None,
    agency_code: str | None = None,
    dossier_code: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> DeliveryQuery:
    """Dead letters: ``exhausted`` (failed after all retries), ``permanent`` (every
    permanent failure) or ``temporary`` (failures still waiting for a retry)."""
    if kind not in DEAD_LETTER_KINDS:
        raise ValueError(f"kind is one of {', '.join(DEAD_LETTER_KINDS)}")
    return DeliveryQuery(
        status=(
            DeliveryStatus.TEMPORARY_FAILURE
            if kind == "temporary"
            else DeliveryStatus.PERMANENT_FAILURE
        ),
        gave_up=True if kind == "exhausted" else None,
        channel=channel or None,
        agency_code=agency_code or None,
        dossier_code=dossier_code or None,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )


@dataclass(frozen=True)
class DeadLetter:
    delivery: DeliveryRow
    fallbacks: list[DeliveryRow]

    @property
    def told_by_fallback(self) -> bool:
        return any(f.status in OK_STATUSES for f in self.fallbacks)

    def as_json(self) -> dict[str, Any]:
        return {
            **self.delivery.as_json(),
            "fallbacks": [
                {"delivery_id": str(f.delivery_id), "channel": f.channel, "status": f.status}
                for f in self.fallbacks
            ],
        }


def dead_letters(log: DeliveryLog, query: DeliveryQuery) -> tuple[list[DeadLetter], int]:
    rows = log.search(query)
    fallbacks = log.fallbacks_of([r.delivery_id for r in rows])
    return [DeadLetter(r, fallbacks.get(r.delivery_id, [])) for r in rows], log.count(query)


@dataclass(frozen=True)
class ProviderView:
    provider: str
    channel: str
    configured: bool
    health: ProviderHealthRow | None
    hour: ProviderStat | None
    day: ProviderStat | None

    @property
    def circuit_state(self) -> str:
        return self.health.circuit_state if self.health else CircuitState.CLOSED

    def as_json(self) -> dict[str, Any]:
        def stat(s: ProviderStat | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {
                "attempts": s.attempts,
                "ok": s.ok,
                "temporary_failures": s.temporary_failures,
                "permanent_failures": s.permanent_failures,
                "error_rate": s.error_rate,
                "last_attempt_at": s.last_attempt_at.isoformat() if s.last_attempt_at else None,
            }

        h = self.health
        return {
            "provider": self.provider,
            "channel": self.channel,
            "configured": self.configured,
            "circuit_state": self.circuit_state,
            "consecutive_failures": h.consecutive_failures if h else 0,
            "open_until": h.open_until.isoformat() if h and h.open_until else None,
            "last_error": h.last_error if h else None,
            "details": h.details if h else None,
            "health_updated_at": h.updated_at.isoformat() if h else None,
            "last_success_at": h.last_success_at.isoformat() if h and h.last_success_at else None,
            "last_failure_at": h.last_failure_at.isoformat() if h and h.last_failure_at else None,
            "last_hour": stat(self.hour),
            "last_day": stat(self.day),
        }


def providers(
    log: DeliveryLog, configured: dict[str, list[str]], now: datetime | None = None
) -> list[ProviderView]:
    """Every provider configured here or seen in the log: health and recent error rates."""
    now = now or utcnow()
    hour = {(s.provider, s.channel): s for s in log.provider_stats(now - timedelta(hours=1))}
    day = {(s.provider, s.channel): s for s in log.provider_stats(now - timedelta(days=1))}
    health = {h.provider: h for h in log.provider_health()}
    keys: set[tuple[str, str]] = {(p, c) for c, names in configured.items() for p in names}
    keys |= set(day) | {(h.provider, h.channel) for h in health.values()}
    return [
        ProviderView(
            provider=p,
            channel=c,
            configured=p in configured.get(c, []),
            health=health.get(p),
            hour=hour.get((p, c)),
            day=day.get((p, c)),
        )
        for c, p in sorted((c, p) for p, c in keys)
    ]
