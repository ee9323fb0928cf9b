"""A Dramatiq middleware that runs one background thread in each worker process.

The events bridge, the sweeper and the retention job each need a thread from worker
boot to shutdown; this is that thread's life cycle, once. The threads that consume a
RabbitMQ queue (the bridge, the callback intake, the dead-letter recorder) share one
reconnect loop: :class:`ConsumerThread`.
"""

from __future__ import annotations

import abc
import threading

import dramatiq
from dramatiq.middleware import Middleware
from pika.exceptions import AMQPError

from notifier.logging import get_logger

log = get_logger(__name__)

# Reconnecting to the broker: the first wait, and the longest (doubling in between).
FIRST_RETRY_S = 0.5
LONGEST_RETRY_S = 15.0


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


class ConsumerThread(BackgroundThread):
    """A background thread that consumes from RabbitMQ in :meth:`consume` (which returns
    or raises when its connection ends) and connects again, with a doubling wait, until
    the worker stops: a lost broker is waited out, any other failure logged and retried."""

    def run(self) -> None:
        delay = FIRST_RETRY_S
        while not self.stopping.is_set():
            try:
                self.consume()
                delay = FIRST_RETRY_S
            except AMQPError as exc:
                log.warning(
                    "lost the broker; reconnecting",
                    thread=self.thread_name,
                    error=repr(exc),
                    retry_in=delay,
                )
                self.stopping.wait(delay)
                delay = min(delay * 2, LONGEST_RETRY_S)
            except Exception:
                log.exception("consumer failed; restarting", thread=self.thread_name)
                self.stopping.wait(delay)
                delay = min(delay * 2, LONGEST_RETRY_S)

    @abc.abstractmethod
    def consume(self) -> None:
        """Connect and consume until the connection ends or ``self.stopping`` is set."""
