"""Dead letters: what RabbitMQ dead-letters becomes notifier's own dead letters, with
its reason, never a message left to expire in a queue nobody reads.

A message reaches a ``.XQ`` queue when Dramatiq gave up on it (its retries ran out)
or, with quorum queues, when the queue's delivery limit ran out: no consumer settled
it in ``broker.delivery_limit`` deliveries, which is what a poison message does (it
crashes the worker each time). Each worker process runs one :class:`DeadLetterRecorder`
consuming the ``.XQ`` of the ingest queue, of every channel queue and (quorum) of the
events queue, and hands each message to :class:`DeadLetters`:

- a group (several events or deliveries in one message) is split: each goes on alone,
  so one poison item does not take the others with it;
- a lone raw event becomes a rejected event (the bytes received, its submitter, the
  reason), which an operator can replay (``notifier replay reject``); one already
  recorded is left alone;
- a lone delivery becomes a dead letter in the delivery log (``permanent-failure``,
  exhausted, or ``unknown`` when a provider call may have sent it), replayable too.

A message is acked only after that is recorded; a recorder that cannot reach the
database gives it back and waits, and the ``.XQ`` has no delivery limit of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import dramatiq
import pika
from dramatiq.common import xq_name
from dramatiq.errors import DecodeError

from notifier.amqp import DEAD_LETTER_SUFFIX, QueuePolicy, node_parameters
from notifier.background import ConsumerThread
from notifier.events import EventRejected
from notifier.logging import get_logger
from notifier.masking import scrub
from notifier.pipeline.bridge import submitter_of
from notifier.pipeline.ingest import Ingest
from notifier.pipeline.received import raw_body
from notifier.settings import EventsSettings
from notifier.store.deliveries.lifecycle import DeliveryStore
from notifier.store.publishers import Submitter, SubmitterKind

log = get_logger(__name__)

SOURCE = "dead-letter"


@dataclass(frozen=True)
class Death:
    """Why RabbitMQ dead-lettered a message (its first ``x-death`` entry)."""

    reason: str  # delivery_limit, rejected, expired, maxlen
    queue: str
    count: int

    @classmethod
    def of(cls, headers: Mapping[str, Any] | None) -> Death:
        deaths = (headers or {}).get("x-death") or []
        first = deaths[0] if deaths else {}
        return cls(
            reason=_text(first.get("reason", "unknown")),
            queue=_text(first.get("queue", "?")),
            count=int(first.get("count", 1) or 1),
        )

    def describe(self, limit: int, retries: int | None = None, error: str | None = None) -> str:
        if self.reason == "delivery_limit":
            return (
                f"dead-lettered by RabbitMQ from {self.queue}: no worker finished it within "
                f"the queue's delivery limit ({limit} deliveries), a poison message (it "
                "may crash the worker)"
            )
        if self.reason == "rejected" and retries is not None:
            why = f"gave up after {retries} retries"
            return f"{why}: {error}" if error else why
        return f"dead-lettered by RabbitMQ from {self.queue} ({self.reason})"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _last_line(traceback: Any) -> str | None:
    if not isinstance(traceback, str):
        return None
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    return scrub(lines[-1].strip())[:500] if lines else None


class DeadLetters:
    """Turns one dead-lettered message into notifier's dead letters (see the module)."""

    def __init__(
        self,
        *,
        ingest: Ingest,
        deliveries: DeliveryStore,
        ingest_actor: dramatiq.Actor[..., Any],
        deliver_actors: Mapping[str, dramatiq.Actor[..., Any]],
        policy: QueuePolicy,
        service_users: frozenset[str] = frozenset(),
    ) -> None:
        self.ingest = ingest
        self.deliveries = deliveries
        self.ingest_actor = ingest_actor
        self.deliver_actors = {a.actor_name: a for a in deliver_actors.values()}
        self.policy = policy
        self.service_users = service_users

    def raw_event(self, body: bytes, properties: Any) -> str:
        """A raw event from the events queue's ``.XQ``; returns what was done."""
        death = Death.of(getattr(properties, "headers", None))
        submitter = submitter_of(properties, self.service_users)
        return self._reject(body, submitter, death.describe(self.policy.delivery_limit))

    def dramatiq_message(self, body: bytes, headers: Mapping[str, Any] | None) -> str:
        """A Dramatiq message from a ``.XQ``; returns what was done."""
        try:
            message = dramatiq.Message.decode(body)
        except DecodeError:
            # Nothing of notifier's writes these; keep a trace of its size and origin.
            log.error(
                "a dead letter that is not a Dramatiq message; dropped",
                queue=Death.of(headers).queue,
                size=len(body),
            )
            return "not a Dramatiq message"
        death = Death.of(headers)
        reason = death.describe(
            self.policy.delivery_limit,
            retries=message.options.get("retries"),
            error=_last_line(message.options.get("traceback")),
        )
        args = list(message.args)
        if message.actor_name == self.ingest_actor.actor_name:
            items, source = args[0], args[1] if len(args) > 1 else SOURCE
            if len(items) > 1:
                for item in items:
                    self.ingest_actor.send([item], source)
                return f"split a group of {len(items)} events"
            text, meta = items[0]
            return self._reject(raw_body(text, meta), _submitter(meta), reason)
        actor = self.deliver_actors.get(message.actor_name)
        if actor is not None:
            ids: list[str] = list(args[0])
            if len(ids) > 1:
                for one in ids:
                    actor.send([one])
                return f"split a group of {len(ids)} deliveries"
            changed = self.deliveries.dead_letter([UUID(i) for i in ids], reason)
            for delivery_id, status in changed.items():
                log.warning(
                    "delivery dead-lettered",
                    delivery_id=str(delivery_id),
                    status=status.value,
                    reason=reason,
                )
            return f"{len(changed)} delivery dead-lettered"
        log.error("a dead letter of an unknown actor; dropped", actor=message.actor_name)
        return "unknown actor"

    def _reject(self, body: bytes, submitter: Submitter, reason: str) -> str:
        event_id = _event_id(body)
        if event_id is not None and self.ingest.known([event_id]):
            return "already recorded"  # ingested before its message was dead-lettered
        self.ingest.reject(
            body,
            source=SOURCE,
            rejection=EventRejected(reason),
            submitter=submitter,
            event_id=None if event_id is None else str(event_id),
        )
        return "kept as a rejected event"


def _event_id(body: bytes) -> UUID | None:
    try:
        return UUID(str(json.loads(body)["event_id"]))
    except (ValueError, TypeError, KeyError):
        return None


def _submitter(meta: Mapping[str, Any]) -> Submitter:
    """Who submitted a dead-lettered ingest item, as ingest itself reads it."""
    try:
        return Submitter.of_meta(meta)
    except (ValueError, KeyError, TypeError):
        return Submitter(SubmitterKind.UNIDENTIFIED, "-")


class DeadLetterRecorder(ConsumerThread):
    """Dramatiq middleware: consumes notifier's dead-letter queues in each worker process."""

    thread_name = "notifier-dead-letters"

    def __init__(
        self,
        broker_url: str,
        events: EventsSettings,
        queues: Sequence[str],
        dead_letters: DeadLetters,
    ) -> None:
        super().__init__()
        self.broker_url = broker_url
        self.events = events
        self.queues = list(queues)  # the work queues whose .XQ are read
        self.dead_letters = dead_letters
        self._handlers: dict[str, Callable[[bytes, Any], str]] = {}

    def consume(self) -> None:
        policy = self.dead_letters.policy
        connection = pika.BlockingConnection(node_parameters(self.broker_url))
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=10)
            handlers: dict[str, Callable[[bytes, Any], str]] = {}
            for queue in self.queues:
                # Declared as Dramatiq declares it (notifier.brokers), so it can be read
                # before any message of that queue was ever sent.
                name = xq_name(queue)
                channel.queue_declare(
                    queue=name, durable=True, arguments=policy.dead_letter_arguments()
                )
                tag = channel.basic_consume(name, on_message_callback=self._on_message)
                handlers[tag] = self._dramatiq
            if policy.quorum:
                name = self.events.queue + DEAD_LETTER_SUFFIX
                channel.queue_declare(
                    queue=name, durable=True, arguments=policy.events_dead_letter_arguments()
                )
                tag = channel.basic_consume(name, on_message_callback=self._on_message)
                handlers[tag] = self.dead_letters.raw_event
            self._handlers = handlers
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=1.0)
            channel.close()
        finally:
            if connection.is_open:
                connection.close()

    def _dramatiq(self, body: bytes, properties: Any) -> str:
        return self.dead_letters.dramatiq_message(body, getattr(properties, "headers", None))

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            done = self._handlers[method.consumer_tag](body, properties)
        except Exception:
            # The database may be down: give it back (a .XQ has no delivery limit).
            log.exception("could not record a dead letter; it waits in its queue")
            channel.basic_nack(method.delivery_tag, requeue=True)
            self.stopping.wait(1.0)
            return
        log.info("dead letter recorded", outcome=done)
        channel.basic_ack(method.delivery_tag)
