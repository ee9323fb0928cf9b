"""The rollup refresh each worker process runs (see
:mod:`notifier.store.deliveries.rollups`): every ``[rollup] interval_s`` it recomputes
the hours whose rows changed and rolls up the hours that settled, at most
``max_hours`` per run. Refreshers in several processes take turns (an advisory lock),
so running it everywhere is harmless; SQLite has nothing to refresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from notifier.background import BackgroundThread
from notifier.logging import get_logger
from notifier.settings import RollupSettings
from notifier.store.deliveries.rollups import Rollups

if TYPE_CHECKING:
    from notifier.app import Notifier

log = get_logger(__name__)


class RollupJob(BackgroundThread):
    """Runs :meth:`Rollups.refresh` in each worker process every ``interval_s``."""

    thread_name = "notifier-rollup"

    def __init__(self, rollups: Rollups, settings: RollupSettings) -> None:
        super().__init__()
        self.rollups = rollups
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and self.rollups.enabled

    def run(self) -> None:
        while not self.stopping.wait(self.settings.interval_s):
            try:
                report = self.rollups.refresh(max_hours=self.settings.max_hours)
            except Exception:  # the database may be down; try again next round
                log.exception("rollup refresh failed")
                continue
            if report.recomputed or report.rolled:
                log.info(
                    "rollup refreshed",
                    recomputed_hours=report.recomputed,
                    rolled_hours=report.rolled,
                    rolled_until=report.rolled_until,
                )


def add_rollup_job(app: Notifier) -> RollupJob:
    """Refresh the rollup in this app's worker processes (added by the workers' entry
    point, like the retention job)."""
    job = RollupJob(Rollups(app.database), app.settings.rollup)
    app.broker.add_middleware(job)
    return job
