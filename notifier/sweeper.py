"""The sweeper: re-enqueues deliveries that have no message in flight.

Every path that records a delivery also enqueues it, and a message is acked only
after its work is recorded, so the broker redelivers what a crash interrupted. What
is left is a crash between the record and the enqueue, or a message dead-lettered by
the broker: the delivery then sits unchanged. Each worker process sweeps for those
every ``interval_s``; a delivery enqueued twice is claimed once, so two sweepers
racing send nothing twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from uuid import UUID

import dramatiq
from dramatiq.middleware import Middleware

from notifier.deliveries import DeliveryStore
from notifier.logging import get_logger
from notifier.settings import SweeperSettings

log = get_logger(__name__)


class Sweeper(Middleware):
    def __init__(
        self,
        store: DeliveryStore,
        settings: SweeperSettings,
        enqueue: Callable[[Iterable[tuple[UUID, str]]], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.enqueue = enqueue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not self.settings.enabled:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="notifier-sweeper", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
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
