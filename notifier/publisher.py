"""Publish dossier status events to the events exchange, with publisher confirms.

This is a convenience for Python publishers; any AMQP client can do the same: plain
JSON, ``content_type=application/json``, ``delivery_mode=2`` (persistent), to the
events exchange with the documented routing key (see docs/events.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pika
from pika.exceptions import NackError, UnroutableError

from notifier.amqp import connection_parameters
from notifier.settings import EventsSettings


@dataclass
class PublishReport:
    confirmed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (event id or index, why)


def event_bytes(event: Any) -> tuple[bytes, str]:
    """Encode one event (a mapping or raw JSON text/bytes) and find its id for reports."""
    if isinstance(event, bytes | str):
        body = event.encode() if isinstance(event, str) else event
        try:
            event_id = str(json.loads(body).get("event_id", "?"))
        except (ValueError, AttributeError):
            event_id = "?"
        return body, event_id
    return json.dumps(event, ensure_ascii=False).encode(), str(event.get("event_id", "?"))


class EventPublisher:
    """A confirmed publisher on one connection. Not thread-safe: one per thread, or
    guarded by the caller (the API holds a lock)."""

    def __init__(self, broker_url: str, events: EventsSettings | None = None) -> None:
        self.events = events or EventsSettings()
        self._connection = pika.BlockingConnection(connection_parameters(broker_url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._lock = threading.Lock()

    def publish(self, event: Any) -> None:
        """Publish one event and wait for the broker's confirm; raises if not confirmed."""
        body, event_id = event_bytes(event)
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event_id if event_id != "?" else None,
        )
        with self._lock:
            # mandatory: an exchange with no queue bound returns the message as unroutable.
            self._channel.basic_publish(
                self.events.exchange, self.events.routing_key, body, properties, mandatory=True
            )

    def publish_many(self, events: Iterable[Any]) -> PublishReport:
        report = PublishReport()
        for index, event in enumerate(events):
            try:
                self.publish(event)
            except (NackError, UnroutableError) as exc:
                report.failed.append((_label(event, index), type(exc).__name__))
            else:
                report.confirmed += 1
        return report

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _label(event: Any, index: int) -> str:
    _body, event_id = event_bytes(event)
    return event_id if event_id != "?" else f"#{index + 1}"
