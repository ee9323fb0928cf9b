"""The sweeper: releases held deliveries when they are due, and re-enqueues deliveries
that have no message in flight.

Held deliveries (status ``scheduled``, see :class:`~notifier.store.deliveries.lifecycle.HoldReason`)
wait in the database, not in the broker: each round moves the due ones to ``queued``
(each row once, whichever worker's sweeper gets it) and enqueues them into the normal
send path. If the enqueue fails (the broker is down), they are held again, due at once,
and the next round tries again; a crash between the release and the enqueue leaves them
``queued`` with no message, which the stale sweep below finds.

Every path that records a delivery also enqueues it, and a message is acked only
after its work is recorded, so the broker redelivers what a crash interrupted. What
is left is a crash between the record and the enqueue, or a message dead-lettered by
the broker: the delivery then sits unchanged. Each worker process sweeps for those
every ``interval_s``; a delivery enqueued twice is claimed once, so two sweepers
racing send nothing twice.

Each round also folds the status changes recorded since the last one into the metric
counters (:mod:`notifier.store.counters`), so a scrape finds little left to fold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from uuid import UUID

from notifier.background import BackgroundThread
from notifier.logging import get_logger
from notifier.settings import SweeperSettings
from notifier.store.deliveries.lifecycle import DeliveryStore

log = get_logger(__name__)


class Sweeper(BackgroundThread):
    thread_name = "notifier-sweeper"

    def __init__(
        self,
        store: DeliveryStore,
        settings: SweeperSettings,
        enqueue: Callable[[Iterable[tuple[UUID, str]]], None],
        fold_counters: Callable[[], int] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.enqueue = enqueue
        self.fold_counters = fold_counters

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def run(self) -> None:
        while not self.stopping.wait(self.settings.interval_s):
            try:
                self.sweep()
            except Exception:  # the database may be down; try again next round
                log.exception("sweep failed")
            if self.fold_counters is not None:
                try:
                    self.fold_counters()
                except Exception:  # counted next round: the rows stay unfolded
                    log.exception("folding the metric counters failed")

    def sweep(self) -> int:
        """Release due held deliveries, then enqueue stale ones; returns how many
        deliveries were enqueued."""
        released = self.release_due()
        return released + self.sweep_stale()

    def release_due(self) -> int:
        """Enqueue the held deliveries that are due (in rounds of ``batch``)."""
        total = 0
        while not self.stopping.is_set():
            due = self.store.release_due(self.settings.batch)
            if not due:
                break
            try:
                self.enqueue(due)
            except Exception:
                # Not lost: held again, due now, for the next round. A copy that did
                # reach its queue finds the delivery held and does nothing.
                self.store.hold_again([delivery_id for delivery_id, _channel in due])
                raise
            total += len(due)
            log.info("released held deliveries into their queues", count=len(due))
            if len(due) < self.settings.batch:
                break
        return total

    def sweep_stale(self) -> int:
        """Enqueue stale deliveries once; returns how many."""
        stale = self.store.stale(
            timedelta(seconds=self.settings.stale_after_s), self.settings.batch
        )
        self.enqueue(stale)
        if stale:
            log.warning("swept stale deliveries back into their queues", count=len(stale))
        return len(stale)
