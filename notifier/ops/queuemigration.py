"""Moving an existing deployment's queues to new arguments (classic to quorum, a new
delivery limit) with nothing lost: ``notifier broker migrate-queues``.

RabbitMQ cannot change a queue's type or arguments in place, so each queue whose
declaration differs is rebuilt through a temporary queue ``<name>.migrating`` of the
new type:

1. refuse if anything consumes the queue (stop the workers and the API first);
2. the events queue only: bind the temporary queue to the events exchange, then
   unbind the old one, so publishers may go on publishing (their events wait in the
   temporary queue);
3. move every message to the temporary queue: each is published with a publisher
   confirm and only then acked on the old queue, and the count moved must equal the
   count the queue held;
4. delete the old queue (only if empty), declare it anew with the new arguments (and
   its binding), move the messages back the same way, delete the temporary queue.

A run that stops anywhere can be run again: a queue already right is left alone and a
temporary queue still holding messages is emptied into its queue. A message published
but not yet acked when the run died is in both queues: at-least-once, which ingest
(by event id) and the delivery claim (by delivery id) absorb.

While the events queue is handed back, the new queue is bound before the temporary
one is unbound (never neither, or publishers' events would be unroutable): an event
published in that instant is queued twice, and ingest drops the copy by event id.

A message's ``user_id`` is checked by RabbitMQ against the connection's user, so an
event published by a TTHC system's user cannot be re-published under its own
``user_id``. It is re-published as notifier's own user naming the original publisher
in the submitter header, which the bridge trusts from notifier's users only: the
event keeps the same submitter and the same agency check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pika
from dramatiq.common import dq_name, xq_name
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from notifier.amqp import DEAD_LETTER_SUFFIX, QueuePolicy, broker_user, node_parameters
from notifier.settings import EventsSettings
from notifier.store.publishers import SUBMITTER_HEADER, Submitter, SubmitterKind

TEMPORARY_SUFFIX = ".migrating"
_NOT_FOUND, _PRECONDITION_FAILED, _NOT_IMPLEMENTED = 404, 406, 540


class MigrationError(Exception):
    """The migration cannot go on safely; nothing was lost (the message says where
    the messages are)."""


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] | None
    # (exchange, routing key) for the events queue: publishers keep publishing.
    binding: tuple[str, str] | None = None


@dataclass
class QueueMove:
    name: str
    action: str  # "unchanged", "created", "migrated", "resumed"
    moved: int = 0


@dataclass
class MigrationReport:
    queues: list[QueueMove] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(q.moved for q in self.queues)


def check_queues(
    broker_url: str, events: EventsSettings, actor_queues: list[str], policy: QueuePolicy
) -> None:
    """Raise :class:`MigrationError` naming the queues a process with ``policy`` could
    not declare (RabbitMQ would answer 406), and what to do about it."""
    probe = QueueMigration(broker_url, policy)
    try:
        differing = probe.differing(deployment_queues(events, actor_queues, policy))
    finally:
        probe.close()
    if differing:
        raise MigrationError(
            f"{len(differing)} queue(s) exist with other arguments than "
            f"NOTIFIER_BROKER__QUEUE_TYPE={policy.queue_type} (delivery limit "
            f"{policy.delivery_limit}) gives them, e.g. {differing[0]}; move them with "
            "`notifier broker migrate-queues` (docs/operations.md), or set the queue "
            "type they have"
        )


def deployment_queues(
    events: EventsSettings, actor_queues: list[str], policy: QueuePolicy
) -> list[QueueSpec]:
    """Every queue notifier declares, with the arguments ``policy`` gives it."""
    specs = []
    if policy.quorum:
        specs.append(
            QueueSpec(events.queue + DEAD_LETTER_SUFFIX, policy.events_dead_letter_arguments())
        )
    specs.append(
        QueueSpec(
            events.queue,
            policy.events_queue_arguments(events),
            (events.exchange, events.routing_key),
        )
    )
    for queue in actor_queues:
        # Dead-letter queues first, so the others' dead-lettering has a target.
        specs.append(QueueSpec(xq_name(queue), policy.dead_letter_arguments()))
        specs.append(QueueSpec(queue, policy.work_queue_arguments(xq_name(queue))))
        specs.append(QueueSpec(dq_name(queue), policy.work_queue_arguments(xq_name(queue))))
    return specs


class QueueMigration:
    """Rebuilds each queue whose arguments differ from its spec (see the module)."""

    def __init__(
        self,
        broker_url: str,
        policy: QueuePolicy,
        *,
        service_users: frozenset[str] = frozenset(),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.policy = policy
        self.user = broker_user(broker_url)
        self.service_users = service_users | {self.user}
        self.progress = progress or (lambda _line: None)
        self.connection = pika.BlockingConnection(node_parameters(broker_url, heartbeat=0))

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def differing(self, specs: list[QueueSpec]) -> list[str]:
        """The queues that exist with other arguments than their spec (a queue that
        does not exist yet is declared, as the worker would)."""
        return [spec.name for spec in specs if self._probe(spec) == "different"]

    def run(self, specs: list[QueueSpec]) -> MigrationReport:
        report = MigrationReport()
        for spec in specs:
            report.queues.append(self.migrate(spec))
        return report

    def migrate(self, spec: QueueSpec) -> QueueMove:
        temporary = spec.name + TEMPORARY_SUFFIX
        temporary_args = {"x-queue-type": self.policy.queue_type}
        result = QueueMove(spec.name, "unchanged")
        state = self._probe(spec)
        if state == "different":
            with self._channel() as channel:
                held = channel.queue_declare(spec.name, passive=True).method
            if held.consumer_count:
                raise MigrationError(
                    f"{spec.name} has {held.consumer_count} consumer(s): stop the workers "
                    "(and the API) before migrating; nothing was changed on it"
                )
            with self._channel() as channel:
                channel.queue_declare(temporary, durable=True, arguments=temporary_args)
                if spec.binding is not None:
                    # New events wait in the temporary queue from now on.
                    channel.queue_bind(temporary, spec.binding[0], spec.binding[1])
                    channel.queue_unbind(spec.name, spec.binding[0], spec.binding[1])
                held = channel.queue_declare(spec.name, passive=True).method
            moved = self._move(spec.name, temporary)
            # An event routed just before the unbind may reach the queue after the count:
            # the queue is deleted only once empty, and whatever came late moves too.
            while not self._delete_if_empty(spec.name):
                moved += self._move(spec.name, temporary)
            if moved < held.message_count:
                raise MigrationError(
                    f"{spec.name}: moved {moved} of {held.message_count} messages; the moved "
                    f"ones are in {temporary}; run the command again"
                )
            self.progress(f"{spec.name}: {moved} message(s) set aside in {temporary}")
            result = QueueMove(spec.name, "migrated")
            state = self._probe(spec)  # now created with the new arguments
        elif state == "created":
            result = QueueMove(spec.name, "created")
        if spec.binding is not None:
            with self._channel() as channel:
                channel.queue_bind(spec.name, spec.binding[0], spec.binding[1])
        if self._exists(temporary):
            if spec.binding is not None:
                with self._channel() as channel:
                    channel.queue_unbind(temporary, spec.binding[0], spec.binding[1])
            with self._channel() as channel:
                waiting = channel.queue_declare(temporary, passive=True).method.message_count
            moved_back = self._move(temporary, spec.name)
            if moved_back < waiting:
                raise MigrationError(
                    f"{spec.name}: moved back {moved_back} of {waiting} messages; the rest "
                    f"wait in {temporary}; run the command again"
                )
            if not self._delete_if_empty(temporary):
                raise MigrationError(
                    f"{spec.name}: messages still wait in {temporary}; run the command again"
                )
            if result.action == "unchanged":
                result.action = "resumed"
            result.moved = moved_back
            self.progress(f"{spec.name}: {moved_back} message(s) moved back")
        return result

    # -- broker operations --------------------------------------------------------------

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        channel = self.connection.channel()
        try:
            yield channel
        finally:
            if channel.is_open:
                channel.close()

    def _probe(self, spec: QueueSpec) -> str:
        """'same', 'created' (it did not exist: now it does) or 'different'."""
        existed = self._exists(spec.name)
        try:
            with self._channel() as channel:
                channel.queue_declare(spec.name, durable=True, arguments=spec.arguments)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == _PRECONDITION_FAILED:
                return "different"
            raise
        return "same" if existed else "created"

    def _delete_if_empty(self, name: str) -> bool:
        """Delete ``name`` if it holds no message; False if it does."""
        with self._channel() as channel:
            if channel.queue_declare(name, passive=True).method.message_count:
                return False
        try:
            with self._channel() as channel:
                # Atomic for a classic queue: a message that just arrived keeps it.
                channel.queue_delete(name, if_empty=True)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == _PRECONDITION_FAILED:
                return False  # not empty after all
            raise
        except ConnectionClosedByBroker as exc:
            if exc.reply_code != _NOT_IMPLEMENTED:
                raise
            # A quorum queue has no if-empty delete (RabbitMQ closes the connection);
            # it was empty just now and nothing is routed to it any more.
            self.connection = pika.BlockingConnection(node_parameters(self.broker_url, heartbeat=0))
            with self._channel() as channel:
                channel.queue_delete(name)
        return True

    def _exists(self, name: str) -> bool:
        try:
            with self._channel() as channel:
                channel.queue_declare(name, passive=True)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                return False
            raise
        return True

    def _move(self, source: str, target: str) -> int:
        """Every message of ``source`` to ``target``: confirmed there, then acked here."""
        moved = 0
        with self._channel() as take, self._channel() as put:
            put.confirm_delivery()
            while True:
                method, properties, body = take.basic_get(source)
                if method is None:
                    return moved
                # Raises (and the message stays in source, unacked, then returned) if
                # the broker does not confirm it.
                put.basic_publish("", target, body, self._republishable(properties), mandatory=True)
                take.basic_ack(method.delivery_tag)
                moved += 1

    def _republishable(self, properties: Any) -> Any:
        """The message's properties, with a foreign ``user_id`` carried in the submitter
        header (see the module)."""
        user_id = getattr(properties, "user_id", None)
        if not user_id or user_id in self.service_users:
            return properties
        headers = dict(properties.headers or {})
        headers[SUBMITTER_HEADER] = json.dumps(
            Submitter(SubmitterKind.BROKER_USER, str(user_id)[:100]).as_json()
        )
        properties.headers = headers
        properties.user_id = self.user
        return properties
