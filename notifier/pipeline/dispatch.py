"""What bounds a crash's damage: backpressure on unrecorded results, and dispatch marks.

``RecordBacklog`` counts, per process, the results that may mean a message reached a
provider (accepted, or maybe sent) and are not yet written. A provider call starts only
while fewer than ``limit`` wait, so a crash leaves at most ``limit - 1`` such results
plus the calls in flight (each adapter's ``max_in_flight``) unrecorded, however slow
recording is under load. Each try holds one :class:`BacklogEntry`, counted at most once
and settled at most once, whichever thread comes first: a result that arrives after its
try was given up on (cut at the lease, or its recording failed) is never counted, so
the limit cannot shrink for good (with a limit of 8, eight such losses stopped every
send of the process).

``DispatchJournal`` writes a mark (provider, attempt) on each delivery before its call
starts. Marks of calls waiting to start are written together, one transaction per
group (a group commit), so the cost is one short write per burst rather than per send.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from notifier.store.deliveries.lifecycle import DispatchMark


class BacklogEntry:
    """One try's place in the backlog: counted when its result may mean "sent", until
    settled; both at most once (under the backlog's lock)."""

    __slots__ = ("counted", "settled")

    def __init__(self) -> None:
        self.counted = False
        self.settled = False


class RecordBacklog:
    """Results waiting to be recorded, per process; callers on the adapters' event loop
    wait in :meth:`admit` and :meth:`count` their results, recording threads
    :meth:`settle` them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def waiting(self) -> int:
        """Results now waiting to be written."""
        return self._count

    @property
    def blocked(self) -> int:
        """Calls now held back until results are written."""
        return len(self._waiters)

    async def admit(self) -> None:
        """Return when a provider call may start: fewer than ``limit`` results wait."""
        while True:
            with self._lock:
                if self._count < self.limit:
                    return
                event = asyncio.Event()
                waiter = (asyncio.get_running_loop(), event)
                self._waiters.append(waiter)
            try:
                await event.wait()
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    def count(self, entry: BacklogEntry) -> None:
        """A result came in (on the event loop, as the call returns): it waits to be
        written, unless its try was already settled (given up on; it is written, or
        will be, as uncertain)."""
        with self._lock:
            if entry.settled or entry.counted:
                return
            entry.counted = True
            self._count += 1

    def settle(self, entries: Iterable[BacklogEntry]) -> None:
        """These tries' results are written, or given up on: no longer this process's
        to bound; wake the calls held back. Settling an entry again does nothing."""
        released = 0
        with self._lock:
            for entry in entries:
                if entry.settled:
                    continue
                entry.settled = True
                if entry.counted:
                    released += 1
            if not released:
                return
            self._count -= released
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)


class DispatchJournal:
    """Durable "a call is about to start" marks, written in group commits off the loop."""

    def __init__(self, write: Callable[[Sequence[DispatchMark]], None]) -> None:
        self._write = write
        self._waiting: list[tuple[DispatchMark, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # One writer thread: a group is written while the next one gathers.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="notifier-dispatch")
        self.commits = 0  # transactions written, for tests and the log

    async def mark(self, mark: DispatchMark) -> None:
        """Return once ``mark`` is committed; raise what the write raised."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((mark, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                await loop.run_in_executor(self._executor, self._write, [m for m, _ in group])
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
            else:
                self.commits += 1
                for _, done in group:
                    if not done.done():
                        done.set_result(None)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
