"""A Dramatiq middleware that runs one background thread in each worker process.

The events bridge, the sweeper and the retention job each need a thread from worker
boot to shutdown; this is that thread's life cycle, once.
"""

from __future__ import annotations

import abc
import threading

import dramatiq
from dramatiq.middleware import Middleware


class BackgroundThread(Middleware, abc.ABC):
    """Runs :meth:`run` in a daemon thread named ``thread_name`` while the worker runs.

    ``run`` must return soon after ``self.stopping`` is set (wait on it, not sleep)."""

    thread_name: str

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return True

    @abc.abstractmethod
    def run(self) -> None:
        """The thread's work, until ``self.stopping`` is set."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not self.enabled:
            return
        self.stopping.clear()
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
