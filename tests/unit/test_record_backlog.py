"""The backlog of unrecorded results: each try counted at most once, settled at most once.

A worker thread gives a try up when its lease is nearly out (it records it as uncertain)
while the event loop may still be finishing that try's call. Whichever side comes
first, the try must leave the count as it found it; a try that stayed counted would
shrink the limit for good, and with the default limit of 8, eight of them stopped every
send of the process."""

from __future__ import annotations

import asyncio

from notifier.pipeline.dispatch import BacklogEntry, RecordBacklog


def _admitted_within(backlog: RecordBacklog, seconds: float) -> bool:
    async def attempt() -> bool:
        try:
            await asyncio.wait_for(backlog.admit(), seconds)
        except TimeoutError:
            return False
        return True

    return asyncio.run(attempt())


def test_a_result_that_arrives_after_its_try_was_given_up_is_never_counted() -> None:
    backlog = RecordBacklog(limit=1)
    entry = BacklogEntry()
    backlog.settle([entry])  # the worker thread recorded the try as uncertain
    backlog.count(entry)  # then its answer came, on the event loop
    assert backlog.waiting == 0
    assert _admitted_within(backlog, 1.0)


def test_a_result_is_released_once_however_often_its_try_is_settled() -> None:
    backlog = RecordBacklog(limit=2)
    first, second = BacklogEntry(), BacklogEntry()
    backlog.count(first)
    backlog.count(first)  # counted once only
    backlog.count(second)
    assert backlog.waiting == 2
    assert not _admitted_within(backlog, 0.05)
    backlog.settle([first])
    backlog.settle([first])  # the group's final settle goes over it again
    assert backlog.waiting == 1
    assert _admitted_within(backlog, 1.0)
    backlog.settle([first, second])
    assert backlog.waiting == 0


def test_settling_a_counted_result_wakes_a_call_held_back() -> None:
    async def scenario() -> bool:
        backlog = RecordBacklog(limit=1)
        entry = BacklogEntry()
        backlog.count(entry)
        held = asyncio.ensure_future(backlog.admit())
        await asyncio.sleep(0.01)
        assert backlog.blocked == 1
        loop = asyncio.get_running_loop()
        # Recording threads settle from outside the loop.
        await loop.run_in_executor(None, backlog.settle, [entry])
        await asyncio.wait_for(held, 1.0)
        return backlog.blocked == 0

    assert asyncio.run(scenario())
