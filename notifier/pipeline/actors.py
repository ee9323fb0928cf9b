"""The Dramatiq actors: ``ingest`` (raw events become deliveries) and one
``deliver_<channel>`` per channel (send, then retry or fall back), and the one way
deliveries are put on their queues.

Actor and queue names are part of the deployment: messages in flight in a running
one carry them, so they never change (tests/unit/test_actor_names.py pins them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

import dramatiq

from notifier.logging import get_logger
from notifier.pipeline.fallback import Fallback
from notifier.pipeline.ingest import Ingest
from notifier.pipeline.sending import Sender
from notifier.settings import WorkerSettings
from notifier.store.deliveries.lifecycle import DeliveryStatus

log = get_logger(__name__)

INGEST_ACTOR = "ingest"
# A delivery redelivered after a crash between its failure record and the fallback
# still plans the fallback (once): the sender then reports that nothing was done.
_MAY_FALL_BACK = (DeliveryStatus.PERMANENT_FAILURE, None)


def deliver_actor_name(channel: str) -> str:
    return f"deliver_{channel}"


def queue_name(worker: WorkerSettings, name: str) -> str:
    """A queue's name: the deployment's prefix, then the actor's stage or channel."""
    return f"{worker.queue_prefix}.{name}"


class Actors:
    """The actors of one app, bound to its broker (not Dramatiq's global one, so tests
    can build several apps)."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        worker: WorkerSettings,
        channels: Iterable[str],
        *,
        ingest: Ingest,
        sender: Sender,
        fallback: Fallback,
    ) -> None:
        self.worker = worker
        self.ingest = ingest
        self.sender = sender
        self.fallback = fallback
        options: dict[str, Any] = {
            "broker": broker,
            "min_backoff": worker.min_backoff_ms,
            "max_backoff": worker.max_backoff_ms,
        }
        self.ingest_actor: dramatiq.Actor[..., None] = dramatiq.actor(
            actor_name=INGEST_ACTOR,
            queue_name=queue_name(worker, INGEST_ACTOR),
            max_retries=worker.max_attempts,
            **options,
        )(self._ingest)
        self.deliver_actors: dict[str, dramatiq.Actor[..., None]] = {}
        for channel in channels:
            self.deliver_actors[channel] = dramatiq.actor(
                actor_name=deliver_actor_name(channel),
                queue_name=queue_name(worker, channel),
                # Attempts and age are bounded in the database (deferrals while every
                # circuit is open do not count); this is only a backstop.
                max_retries=1000,
                **options,
            )(self._deliverer(channel))

    def _ingest(self, events: list[tuple[str, dict[str, Any]]], source: str) -> None:
        try:
            results = self.ingest.handle_batch([(raw, meta) for raw, meta in events], source=source)
        except Exception:
            if len(events) == 1:
                raise  # retried with backoff, then dead-lettered with its reason
            # One event's fault must not hold back or dead-letter the others: each
            # goes on alone (those already recorded are dropped as duplicates).
            log.exception("ingest of a group failed; its events go on one by one")
            for item in events:
                self.ingest_actor.send([item], source)
            return
        self.enqueue_deliveries(d for result in results for d in result.to_enqueue)

    def _deliverer(self, channel: str) -> Callable[[list[str]], None]:
        falls_back = self.fallback.applies_to(channel)

        def deliver(delivery_ids: list[str]) -> None:
            retries: dict[int, list[tuple[UUID, int]]] = {}
            for outcome in self.sender.send([UUID(i) for i in delivery_ids], channel):
                if falls_back and outcome.status in _MAY_FALL_BACK:
                    self.enqueue_deliveries(self.fallback.plan(outcome.delivery_id))
                if outcome.retry_in_ms is not None:
                    # Retries due within the same second travel in one message.
                    retries.setdefault(outcome.retry_in_ms // 1000, []).append(
                        (outcome.delivery_id, outcome.retry_in_ms)
                    )
            for group in retries.values():
                self.enqueue_deliveries(
                    [(delivery_id, channel) for delivery_id, _ in group],
                    delay_ms=max(delay for _, delay in group),
                )

        return deliver

    def enqueue_deliveries(
        self, deliveries: Iterable[tuple[UUID, str]], *, delay_ms: int | None = None
    ) -> None:
        """Put deliveries on their channels' queues (confirmed by RabbitMQ), one message
        per channel and ``worker.batch_size`` deliveries."""
        by_channel: dict[str, list[str]] = {}
        for delivery_id, channel in deliveries:
            by_channel.setdefault(channel, []).append(str(delivery_id))
        size = self.worker.batch_size
        for channel, ids in by_channel.items():
            for start in range(0, len(ids), size):
                self.deliver_actors[channel].send_with_options(
                    args=(ids[start : start + size],), delay=delay_ms
                )
