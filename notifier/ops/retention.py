"""Retention: personal data is kept only as long as it is useful (Decree 13/2023/ND-CP).

What goes, once older than its period (``NOTIFIER_RETENTION__*``):

- deliveries (``deliveries_days``, default 30): the full recipient and the rendered
  message (``deliveries.recipient``, ``deliveries.content``) become NULL; the row stays
  with its status, attempts, times, masked recipient and keyed hash, so counts,
  reports and searches by contact still work;
- events: the payload as received (names, contacts) becomes NULL once the event and
  every delivery of it (fallbacks are created later) are past ``deliveries_days``;
- rejected events: the kept payload (text and raw bytes) becomes NULL after
  ``deliveries_days`` (the
  reason and size stay; a purged reject can no longer be replayed);
- the portal inbox (``inbox_days``, default 180): notifications are deleted;
- receipt nonces (``receipt_nonces_days``, default 7): deleted. A nonce must outlive
  every provider's receipt window twice over (a receipt stamped at the edge of the
  window can arrive that much later), so the period is raised to that when shorter;
- the status outbox (``NOTIFIER_STATUSES__KEEP_PUBLISHED_DAYS``, default 2): rows
  published to the status stream are deleted that long after; a pending row never is
  (it is not lost), except without RabbitMQ (the embedded mode has no stream), where
  rows are deleted that long after the change. A row is counted in the metric counters
  before it goes (notifier.store.counters: the purge folds what is left first).

Statuses themselves stay: events, deliveries (status, attempts, times, masked
recipient) and rejects (reason, event id, agency, dossier) are what the status API
reads, for as long as the delivery log keeps them.

Each worker process runs the purge every ``interval_s`` (:class:`RetentionJob`, a
Dramatiq middleware like the sweeper, added by :func:`add_retention_job` where workers
run: ``notifier worker``, the demo); ``notifier purge [--dry-run]`` runs it once.
Purging is idempotent, so several processes doing it at once is harmless. Tests pass
``now`` to control the clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from notifier.background import BackgroundThread
from notifier.logging import get_logger
from notifier.plugins.registry import Provider, Registry
from notifier.settings import RetentionSettings, Settings
from notifier.store import Database
from notifier.store.counters import MetricCounters
from notifier.store.schema import (
    deliveries,
    events,
    inbound_messages,
    inbox_notifications,
    receipt_nonces,
    rejected_events,
    retention_marks,
    status_outbox,
    utcnow,
)

if TYPE_CHECKING:
    from notifier.app import Notifier

log = get_logger(__name__)

_DAY = 86_400.0


@dataclass(frozen=True)
class PurgeReport:
    """What one purge cleared (or, with ``dry_run``, would clear)."""

    deliveries: int  # deliveries whose recipient and content were cleared
    events: int  # event payloads cleared
    rejects: int  # rejected-event payloads cleared
    inbox: int  # inbox notifications deleted
    nonces: int  # receipt nonces deleted
    inbound: int  # citizens' messages whose (masked) text was cleared
    dry_run: bool
    deliveries_before: datetime
    inbox_before: datetime
    nonces_before: datetime
    statuses: int = 0  # status outbox rows deleted (published, or no stream)

    @property
    def total(self) -> int:
        return (
            self.deliveries
            + self.events
            + self.rejects
            + self.inbox
            + self.nonces
            + self.inbound
            + self.statuses
        )

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))  # type: ignore[no-any-return]


def _ignore(_rows: int) -> None:
    """No one is watching the purge's progress."""


class Retention:
    """Clears personal data past its retention period, in batches.

    Periods are raised to what sending and receipts need: a delivery may still be sent
    until the worker's max age, and a receipt nonce must outlive every provider's
    receipt window twice over. The providers are the registry's (built from the
    settings when not given); ``min_*_age_s`` raise the floors further (tests)."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        registry: Registry | None = None,
        min_delivery_age_s: float = 0.0,
        min_nonce_age_s: float = 0.0,
    ) -> None:
        self.database = database
        self.settings: RetentionSettings = settings.retention
        self.outbox_age = timedelta(seconds=settings.statuses.keep_published_days * _DAY)
        # Without RabbitMQ nothing publishes the outbox: its rows go by age alone.
        self.outbox_unpublished_too = not settings.uses_rabbitmq
        providers = (registry or Registry.from_settings(settings)).all_providers()
        windows = _receipt_windows_s(providers)
        # A delivery may still be sent until the worker's max age: its contact and text
        # are needed until then, whatever the retention says.
        self.delivery_age = timedelta(
            seconds=max(
                self.settings.deliveries_days * _DAY,
                settings.worker.max_age_s,
                min_delivery_age_s,
            )
        )
        self.inbox_age = timedelta(seconds=self.settings.inbox_days * _DAY)
        self.nonce_age = timedelta(
            seconds=max(
                self.settings.receipt_nonces_days * _DAY,
                2 * max(windows, default=0.0),
                min_nonce_age_s,
            )
        )

    def purge(
        self,
        now: datetime | None = None,
        *,
        dry_run: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> PurgeReport:
        """Clear (or with ``dry_run`` count) what is past its period; ``on_batch(n)`` is
        told after each batch of ``n`` rows (the CLI's progress bar)."""
        now = now or utcnow()
        step = on_batch or _ignore
        delivery_cutoff = now - self.delivery_age
        inbox_cutoff = now - self.inbox_age
        nonce_cutoff = now - self.nonce_age
        d, e, r = deliveries.c, events.c, rejected_events.c
        recent_delivery = sa.exists().where(
            d.event_id == e.event_id, d.created_at >= delivery_cutoff
        )
        if not dry_run:
            # Counted before any is pruned, even where no sweeper or scrape folds them.
            MetricCounters(self.database).fold_all()

        def with_recent_deliveries(
            connection: sa.Connection, event_ids: Sequence[Any]
        ) -> set[Any]:
            # The batch's deliveries, by event id (uq_deliveries_key leads with it: a few rows an
            # event), their age compared here: a condition on created_at in SQL could
            # lead the planner to read every recent delivery, most of the log.
            found = connection.execute(
                sa.select(d.event_id, d.created_at).where(d.event_id.in_(event_ids))
            )
            return {event_id for event_id, created in found if created >= delivery_cutoff}
        report = PurgeReport(
            deliveries=self._clear(
                deliveries,
                d.delivery_id,
                d.created_at,
                delivery_cutoff,
                sa.and_(
                    d.created_at < delivery_cutoff,
                    sa.or_(d.recipient.is_not(None), d.content.is_not(None)),
                ),
                {"recipient": sa.null(), "content": sa.null()},
                dry_run,
                step,
            ),
            events=self._clear(
                events,
                e.event_id,
                e.received_at,
                delivery_cutoff,
                sa.and_(e.received_at < delivery_cutoff, e.payload.is_not(None)),
                {"payload": sa.null()},
                dry_run,
                step,
                # A later delivery (a fallback) may still render from the payload.
                spared=(recent_delivery, with_recent_deliveries),
            ),
            rejects=self._clear(
                rejected_events,
                r.reject_id,
                r.received_at,
                delivery_cutoff,
                sa.and_(
                    r.received_at < delivery_cutoff,
                    sa.or_(r.payload.is_not(None), r.payload_raw.is_not(None)),
                ),
                # The raw bytes are the same personal data as the text.
                {"payload": sa.null(), "payload_raw": sa.null()},
                dry_run,
                step,
            ),
            inbox=self._delete(
                inbox_notifications,
                inbox_notifications.c.notification_id,
                inbox_notifications.c.created_at < inbox_cutoff,
                dry_run,
                step,
            ),
            nonces=self._delete_nonces(nonce_cutoff, dry_run, step),
            # Citizens' messages: kept as long as deliveries (the text masked already;
            # the row, masked sender and what it asked stay for counts).
            inbound=self._clear(
                inbound_messages,
                inbound_messages.c.inbound_id,
                inbound_messages.c.received_at,
                delivery_cutoff,
                sa.and_(
                    inbound_messages.c.received_at < delivery_cutoff,
                    inbound_messages.c.text_masked.is_not(None),
                ),
                {"text_masked": sa.null()},
                dry_run,
                step,
            ),
            statuses=self._delete(
                status_outbox,
                status_outbox.c.sequence,
                sa.and_(
                    (
                        status_outbox.c.occurred_at < now - self.outbox_age
                        if self.outbox_unpublished_too
                        else status_outbox.c.published_at < now - self.outbox_age
                    ),
                    # Counted first: the metric counters fold every row (store.counters).
                    status_outbox.c.folded,
                ),
                dry_run,
                step,
            ),
            dry_run=dry_run,
            deliveries_before=delivery_cutoff,
            inbox_before=inbox_cutoff,
            nonces_before=nonce_cutoff,
        )
        if report.total:
            log.info(
                "retention purge" + (" (dry run)" if dry_run else ""),
                deliveries=report.deliveries,
                events=report.events,
                rejects=report.rejects,
                inbox=report.inbox,
                nonces=report.nonces,
                inbound=report.inbound,
                statuses=report.statuses,
            )
        return report

    # -- batches --------------------------------------------------------------------------

    def _count(self, table: sa.Table, condition: sa.ColumnElement[bool]) -> int:
        with self.database.engine.connect() as connection:
            found = connection.execute(
                sa.select(sa.func.count()).select_from(table).where(condition)
            ).scalar_one()
        return int(found)

    def _clear(
        self,
        table: sa.Table,
        key: sa.Column[Any],
        age: sa.Column[Any],
        cutoff: datetime,
        condition: sa.ColumnElement[bool],
        values: dict[str, Any],
        dry_run: bool,
        on_batch: Callable[[int], None],
        spared: tuple[
            sa.ColumnElement[bool], Callable[[sa.Connection, Sequence[Any]], set[Any]]
        ]
        | None = None,
    ) -> int:
        """Set ``values`` on rows older (by ``age``) than ``cutoff`` matching
        ``condition``, a batch per transaction, oldest first, except those ``spared``: a
        condition on the row (what a dry run counts) and a function giving those of a
        batch's keys it holds.

        Cleared rows stay (counts and reports read them), so a purge that looked from the
        oldest row would walk past every day cleared before, once a batch. Instead each
        batch starts where the last ended (``age`` at least the last batch's newest),
        and the first where the last purge ended: ``retention_marks`` holds, for each
        table, an age before which every row is cleared (the newest age of the last
        batch, or the cutoff once a purge has finished; never past a row spared). It
        moves in the same transaction as its batch, and only forward (several
        processes purge at once), so a purge interrupted is finished by the next. Rows
        are created "now", long after any cutoff, so none appears behind the mark.

        JSON columns are cleared with ``sa.null()``: SQL NULL, not the JSON ``null`` a
        plain ``None`` would store (which ``IS NOT NULL`` would find again)."""
        if dry_run:
            if spared is not None:
                condition = sa.and_(condition, sa.not_(spared[0]))
            return self._count(table, condition)
        done = 0
        since = self._mark(table.name)
        # Rows spared at the instant ``since``: they still match, and are not read again.
        spared_at_since: set[Any] = set()
        oldest_spared: datetime | None = None
        while True:
            batch = sa.select(key, age).where(condition)
            if since is not None:
                # At least, not after: rows of the same instant may be in the next batch
                # (those cleared already no longer match ``condition``).
                batch = batch.where(age >= since)
            if spared_at_since:
                batch = batch.where(key.not_in(spared_at_since))
            kept: set[Any] = set()
            with self.database.begin() as connection:
                rows = connection.execute(batch.order_by(age).limit(self.settings.batch)).all()
                keys = [row[0] for row in rows]
                if keys and spared:
                    kept = spared[1](connection, keys)
                    keys = [k for k in keys if k not in kept]
                if keys:
                    connection.execute(sa.update(table).where(key.in_(keys)).values(**values))
                finished = len(rows) < self.settings.batch
                newest = rows[-1][1] if rows else since
                oldest_spared = min(
                    [row[1] for row in rows if row[0] in kept]
                    + ([] if oldest_spared is None else [oldest_spared]),
                    default=None,
                )
                mark = cutoff if finished else newest
                if mark is not None:
                    self._move_mark(connection, table.name, min(mark, oldest_spared or mark))
            done += len(keys)
            on_batch(len(keys))
            if finished:
                return done
            edge = {row[0] for row in rows if row[1] == newest and row[0] in kept}
            spared_at_since = spared_at_since | edge if newest == since else edge
            since = newest

    def _mark(self, name: str) -> datetime | None:
        with self.database.engine.connect() as connection:
            found = connection.execute(
                sa.select(retention_marks.c.cleared_before).where(retention_marks.c.name == name)
            ).scalar_one_or_none()
        return cast("datetime | None", found)

    def _move_mark(self, connection: sa.Connection, name: str, cleared_before: datetime) -> None:
        """Forward only: another process may have moved it further meanwhile."""
        m = retention_marks.c
        connection.execute(
            self.database.insert_ignore(retention_marks, "name").values(
                name=name, cleared_before=cleared_before
            )
        )
        connection.execute(
            sa.update(retention_marks)
            .where(m.name == name, m.cleared_before < cleared_before)
            .values(cleared_before=cleared_before)
        )

    def _delete(
        self,
        table: sa.Table,
        key: sa.Column[Any],
        condition: sa.ColumnElement[bool],
        dry_run: bool,
        on_batch: Callable[[int], None],
    ) -> int:
        if dry_run:
            return self._count(table, condition)
        done = 0
        while True:
            with self.database.begin() as connection:
                ids = (
                    connection.execute(sa.select(key).where(condition).limit(self.settings.batch))
                    .scalars()
                    .all()
                )
                if ids:
                    connection.execute(sa.delete(table).where(key.in_(ids)))
            done += len(ids)
            on_batch(len(ids))
            if len(ids) < self.settings.batch:
                return done

    def _delete_nonces(
        self, cutoff: datetime, dry_run: bool, on_batch: Callable[[int], None]
    ) -> int:
        # Keyed by (provider, nonce): delete by time directly, in one statement per batch
        # of the oldest first.
        n = receipt_nonces.c
        condition = n.received_at < cutoff
        if dry_run:
            return self._count(receipt_nonces, condition)
        done = 0
        while True:
            with self.database.begin() as connection:
                rows = connection.execute(
                    sa.select(n.provider, n.nonce).where(condition).limit(self.settings.batch)
                ).all()
                for provider in {row.provider for row in rows}:
                    connection.execute(
                        sa.delete(receipt_nonces).where(
                            n.provider == provider,
                            n.nonce.in_([row.nonce for row in rows if row.provider == provider]),
                        )
                    )
            done += len(rows)
            on_batch(len(rows))
            if len(rows) < self.settings.batch:
                return done


def _receipt_windows_s(providers: Iterable[Provider]) -> list[float]:
    """How late each provider's receipts may come (its adapter settings say, if any)."""
    return [float(getattr(p.settings, "receipt_max_age_s", 0) or 0) for p in providers]


class RetentionJob(BackgroundThread):
    """Runs :meth:`Retention.purge` in each worker process every ``interval_s``."""

    thread_name = "notifier-retention"

    def __init__(self, retention: Retention) -> None:
        super().__init__()
        self.retention = retention
        self.settings = retention.settings

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def run(self) -> None:
        # A first purge soon after boot, so restarts more often than the interval still
        # purge; then every interval.
        delay = min(self.settings.interval_s, 60.0)
        while not self.stopping.wait(delay):
            delay = self.settings.interval_s
            try:
                self.retention.purge()
            except Exception:  # the database may be down; try again next round
                log.exception("retention purge failed")


def add_retention_job(app: Notifier) -> RetentionJob:
    """Run the purge in this app's worker processes (the workers' entry points call it:
    the app itself does not know about retention, which sits above it)."""
    job = RetentionJob(Retention(app.database, app.settings, registry=app.registry))
    app.broker.add_middleware(job)
    return job
