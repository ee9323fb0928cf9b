"""The sweeper: re-enqueues deliveries that have no message in flight.

Every path that records a delivery also enqueues it, and a message is acked only
after its work is recorded, so the broker redelivers what a crash interrupted. What
is left is a crash between the record and the enqueue, or a message dead-lettered by
the broker: the delivery then sits unchanged. Each worker process sweeps for those
every ``interval_s``; a delivery enqueued twice is claimed once, so two sweepers
racing send nothing twice.
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
    ) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.enqueue = enqueue

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def run(self) -> None:
        while not self.stopping.wait(self.settings.interval_s):
            try:
                self.sweep()
            except Exception:  # the database may be down; try again next round
                log.exception("sweep failed")

    def sweep(self) -> int:
        """Enqueue stale deliveries once; returns how many."""
        stale = self.store.stale(
            timedelta(seconds=self.settings.stale_after_s), self.settings.batch
        )
        self.enqueue(stale)
        if stale:
            log.warning("swept stale deliveries back into their queues", count=len(stale))
        return len(stale)
