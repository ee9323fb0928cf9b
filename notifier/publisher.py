"""Publish dossier status events to the events exchange, with publisher confirms.

This is a convenience for Python publishers; any AMQP client can do the same: plain
JSON, ``content_type=application/json``, ``delivery_mode=2`` (persistent), to the
events exchange with the documented routing key (see docs/events.md).

Two paths, the same guarantee (an event counts as published only once RabbitMQ
confirmed it; unroutable and refused events are reported):

- :meth:`EventPublisher.publish` sends one event and waits for its confirm (about
  1.5 ms on loopback): simple, for one event at a time (the HTTP API).
- :meth:`EventPublisher.publish_batch` (and ``publish_many``) pipelines: up to
  ``window`` events are in flight unconfirmed, confirms come back asynchronously
  (RabbitMQ acknowledges several at once), and every event ends up in the report as
  confirmed or failed with the reason, also when the connection drops mid-batch.
  On a 2-core machine with RabbitMQ on it: 10,000–19,000 events/s, against
  650–1,400/s one confirm at a time (docs/performance.md).

Several broker nodes (``amqp://u:p@rmq1,rmq2,rmq3/vhost``, see notifier.amqp): the
publisher connects to any live node and, when its node dies, goes on with another,
publishing again what was not yet confirmed. An event may then be queued twice; ingest
drops duplicates by ``event_id``, so this is at-least-once and safe (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pika
from pika import spec
from pika.exceptions import (
    AMQPConnectionError,
    ChannelClosedByBroker,
    ChannelWrongStateError,
    ConnectionWrongStateError,
)

from notifier.amqp import broker_user, node_parameters
from notifier.settings import EventsSettings

# Events published before the IO loop gets a turn: enough to fill TCP segments well,
# few enough that confirms are read often.
_CHUNK = 128


@dataclass
class PublishReport:
    confirmed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (event id or index, why)
    # Connections lost mid-batch after which the batch went on from another node.
    failovers: int = 0


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


# When the event was published (Unix time in milliseconds): where /metrics' latency
# histogram publish -> accepted starts (the bridge stores it as events.published_at).
PUBLISHED_AT_HEADER = "x-published-at"


def published_at_header() -> dict[str, int]:
    """The publish-time header, stamped now."""
    return {PUBLISHED_AT_HEADER: time.time_ns() // 1_000_000}


def _properties(
    event_id: str, user_id: str | None, headers: dict[str, Any] | None = None
) -> pika.BasicProperties:
    # user_id: RabbitMQ checks it is the connection's user and refuses the message
    # otherwise, so notifier knows for sure who published (and for which agencies).
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=event_id if event_id != "?" else None,
        user_id=user_id or None,
        headers={**published_at_header(), **(headers or {})},
    )


class EventPublisher:
    """A confirmed publisher on one connection. Not thread-safe: one per thread, or
    guarded by the caller (the API holds a lock)."""

    def __init__(
        self,
        broker_url: str,
        events: EventsSettings | None = None,
        *,
        user_id: str | None = None,
        spread: bool = True,
    ) -> None:
        """``spread``: start at a random node of the URL (publishers spread over the
        cluster); False: try them in the URL's order (a publisher that prefers the node
        nearest to it, listed first)."""
        self.broker_url = broker_url
        self.spread = spread
        self.events = events or EventsSettings()
        # The user this connection authenticates as (from the URL unless given).
        self.user_id = user_id if user_id is not None else broker_user(broker_url)
        self._connection: Any = None
        self._channel: Any = None
        self._connect()
        self._lock = threading.Lock()

    def _connect(self) -> None:
        # pika tries the nodes in turn (a random one first): any live node will do.
        self._connection = pika.BlockingConnection(
            node_parameters(self.broker_url, shuffle=self.spread)
        )
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()

    def publish(self, event: Any, *, headers: dict[str, Any] | None = None) -> None:
        """Publish one event and wait for the broker's confirm; raises if not confirmed
        (``NackError``, ``UnroutableError``, or the connection's error once no node of
        the cluster can be reached).

        A connection lost before the confirm: the event is published again on a new
        connection (another node, when the URL names several), at most once per node.
        """
        body, event_id = event_bytes(event)
        properties = _properties(event_id, self.user_id, headers)
        with self._lock:
            tries = len(node_parameters(self.broker_url, shuffle=False))
            for attempt in range(tries + 1):
                try:
                    if self._connection is None or not self._connection.is_open:
                        self._connect()
                    # mandatory: an exchange with no queue bound returns it as unroutable.
                    self._channel.basic_publish(
                        self.events.exchange,
                        self.events.routing_key,
                        body,
                        properties,
                        mandatory=True,
                    )
                    return
                except ChannelClosedByBroker:
                    raise  # refused (no such exchange, a forged user_id): not a failover
                except (
                    AMQPConnectionError,
                    ChannelWrongStateError,
                    ConnectionWrongStateError,
                ):
                    # Lost before the confirm: it may or may not be queued, so publish it
                    # again (a duplicate is dropped by event id at ingest).
                    self._drop_connection()
                    if attempt == tries:
                        raise

    def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # it is being thrown away
                connection.close()

    def publish_many(self, events: Iterable[Any]) -> PublishReport:
        """Publish many events with pipelined confirms (see :meth:`publish_batch`)."""
        return self.publish_batch(events)

    def publish_batch(
        self,
        events: Iterable[Any],
        *,
        window: int = 1000,
        timeout_s: float = 30.0,
        failovers: int | None = None,
    ) -> PublishReport:
        """Publish ``events`` with up to ``window`` unconfirmed at a time, on a connection
        of the batch's own, and report each as confirmed or failed.

        ``events`` is consumed lazily (a generator of a million events is fine). Failed
        reasons: ``UnroutableError`` (no queue bound), ``NackError`` (the broker refused
        it, e.g. a full queue), ``not confirmed: <error>`` (the connection or channel
        was lost, or no confirm came within ``timeout_s``: the event may or may not be
        queued, so publish it again; consumers drop duplicates by event id),
        ``not published: <error>`` (never sent) and an encoding error's name. Raises
        ``AMQPConnectionError`` only if the connection cannot be opened at all, and what
        iterating ``events`` raised, after the events before it are settled.

        Failover: when the connection is lost (not refused by the broker), the batch goes
        on from the next node of the URL, first publishing again the events that were
        not confirmed, up to ``failovers`` times (default: one fewer than the nodes, so a
        single node reports them failed as before). Only after the last one are events
        reported ``not confirmed``.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        nodes = node_parameters(self.broker_url, shuffle=self.spread)
        allowed = len(nodes) - 1 if failovers is None else failovers
        report = PublishReport()
        pending: Iterable[Any] = events
        for round_ in range(allowed + 1):
            node = nodes[round_ % len(nodes)]
            batch = _PipelinedBatch(
                node,
                self.events,
                pending,
                window,
                timeout_s,
                self.user_id,
                keep_lost=round_ < allowed,
            )
            try:
                part = batch.run()
            except AMQPConnectionError:
                if round_ == allowed or batch.started:
                    raise
                continue  # this node is down: the events are untouched, try the next
            report.confirmed += part.confirmed
            report.failed += part.failed
            if batch.lost is None:
                return report
            report.failovers += 1
            lost, remaining = batch.lost, batch.remaining()
            pending = itertools.chain((body for _label, body in lost), remaining)
        return report

    def close(self) -> None:
        # Its node may have died meanwhile: closing a lost connection is not an error.
        self._drop_connection()

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class _InFlight:
    label: str
    body: bytes
    returned: bool = False


class _PipelinedBatch:
    """One batch on pika's asynchronous adapter (SelectConnection), driven in the
    caller's thread until every event is settled.

    Confirm-mode delivery tags count publishes on the channel from 1, so the n-th
    publish is tag n. RabbitMQ sends ``basic.return`` (unroutable, mandatory) before
    the message's ``basic.ack``; a return carries no tag, so it is matched to the
    oldest unsettled publish of the same body (identical bodies are the same event).
    """

    def __init__(
        self,
        parameters: pika.URLParameters,
        settings: EventsSettings,
        events: Iterable[Any],
        window: int,
        timeout_s: float,
        user_id: str | None = None,
        *,
        keep_lost: bool = False,
    ) -> None:
        self.settings = settings
        # keep_lost: a lost connection leaves the unconfirmed events (label, body) in
        # ``lost`` and the rest of ``events`` unread, for the caller to go on elsewhere.
        self.keep_lost = keep_lost
        self.lost: list[tuple[str, bytes]] | None = None
        self.started = False
        self.user_id = user_id
        self.window = window
        self.timeout_s = timeout_s
        self.report = PublishReport()
        self._events: Iterator[tuple[int, Any]] = enumerate(events)
        self._in_flight: dict[int, _InFlight] = {}  # tag -> event, ascending tags
        self._by_body: dict[bytes, deque[int]] = {}
        self._next_tag = 0
        self._exhausted = False
        self._finishing = False
        self._pump_scheduled = False
        self._last_progress = time.monotonic()
        self._open_error: BaseException | None = None
        self._events_error: Exception | None = None
        self._channel: Any = None
        self._connection = pika.SelectConnection(
            parameters,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
        )

    def run(self) -> PublishReport:
        ioloop = self._connection.ioloop
        try:
            ioloop.start()  # returns when a callback stops it (finished or failed)
        finally:
            ioloop.close()
        if self._open_error is not None:
            if isinstance(self._open_error, AMQPConnectionError):
                raise self._open_error
            raise AMQPConnectionError(repr(self._open_error)) from self._open_error
        if self._events_error is not None:
            raise self._events_error
        return self.report

    # -- connection and channel ------------------------------------------------------

    def _on_open_error(self, connection: Any, error: BaseException) -> None:
        self._open_error = error
        connection.ioloop.stop()

    def remaining(self) -> Iterator[Any]:
        """The events not yet read (after a lost connection with ``keep_lost``)."""
        return (event for _index, event in self._events)

    def _on_connection_open(self, connection: Any) -> None:
        self.started = True
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        self._watch()
        self._pump()

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        if not self._finishing:
            # Closed by the broker (e.g. 404: no such exchange) or with the connection.
            self._abandon(reason)
        if self._connection.is_open:
            self._connection.close()

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        if not self._finishing:
            self._abandon(reason)
        connection.ioloop.stop()

    def _finish(self) -> None:
        self._finishing = True
        if self._connection.is_open:
            self._connection.close()  # -> _on_connection_closed stops the loop
        elif not self._connection.is_closing:
            self._connection.ioloop.stop()

    def _abandon(self, reason: BaseException) -> None:
        """The connection or channel is gone: every unsettled event failed (or, with
        ``keep_lost`` and a lost connection rather than a refusal, is kept to resend)."""
        if self.lost is not None:
            return  # already kept for the next node
        self._finishing = True
        lost_connection = not isinstance(reason, ChannelClosedByBroker | TimeoutError)
        if self.keep_lost and lost_connection and self.lost is None:
            self.lost = [(f.label, f.body) for f in self._in_flight.values()]
            self._in_flight.clear()
            self._by_body.clear()
            return
        why = f"{type(reason).__name__}: {reason}".rstrip(": ")
        for in_flight in self._in_flight.values():
            self.report.failed.append((in_flight.label, f"not confirmed: {why}"))
        self._in_flight.clear()
        self._by_body.clear()
        for index, event in self._events:
            self.report.failed.append((_label(event, index), f"not published: {why}"))
        self._exhausted = True

    def _watch(self) -> None:
        """Give up when confirms stop coming (a stuck broker, a blocked connection)."""
        if self._finishing:
            return
        if self._in_flight and time.monotonic() - self._last_progress > self.timeout_s:
            self._abandon(TimeoutError(f"no confirm within {self.timeout_s:g}s"))
            self._finish()
            return
        self._connection.ioloop.call_later(min(1.0, self.timeout_s / 4), self._watch)

    # -- publishing ---------------------------------------------------------------------

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._finishing:
            return
        budget = min(self.window - len(self._in_flight), _CHUNK)
        for _ in range(budget):
            try:
                index, event = next(self._events)
            except StopIteration:
                self._exhausted = True
                break
            except Exception as exc:  # the caller's iterable failed: settle, then raise it
                self._events_error = exc
                self._exhausted = True
                break
            try:
                body, event_id = event_bytes(event)
            except (TypeError, ValueError) as exc:  # not JSON-encodable: never sent
                self.report.failed.append((f"#{index + 1}", type(exc).__name__))
                continue
            self._next_tag += 1
            tag = self._next_tag
            self._in_flight[tag] = _InFlight(event_id if event_id != "?" else f"#{index + 1}", body)
            self._by_body.setdefault(body, deque()).append(tag)
            self._channel.basic_publish(
                self.settings.exchange,
                self.settings.routing_key,
                body,
                _properties(event_id, self.user_id),
                mandatory=True,
            )
        if self._exhausted:
            if not self._in_flight:
                self._finish()
        elif len(self._in_flight) < self.window and not self._pump_scheduled:
            # Let the loop write what is buffered and read confirms, then go on.
            self._pump_scheduled = True
            self._connection.ioloop.call_later(0, self._pump)

    def _on_return(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        for tag in self._by_body.get(body, ()):
            in_flight = self._in_flight[tag]
            if not in_flight.returned:
                in_flight.returned = True
                return

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            tags = list(itertools.takewhile(lambda t: t <= tag, self._in_flight))
        else:
            tags = [tag] if tag in self._in_flight else []
        for settled in tags:
            self._settle(settled, acked)
        self._last_progress = time.monotonic()
        if self._exhausted and not self._in_flight:
            self._finish()
        elif not self._pump_scheduled:
            self._pump()

    def _settle(self, tag: int, acked: bool) -> None:
        in_flight = self._in_flight.pop(tag)
        same_body = self._by_body[in_flight.body]
        if same_body[0] == tag:
            same_body.popleft()
        else:
            same_body.remove(tag)
        if not same_body:
            del self._by_body[in_flight.body]
        if in_flight.returned:
            self.report.failed.append((in_flight.label, "UnroutableError"))
        elif not acked:
            self.report.failed.append((in_flight.label, "NackError"))
        else:
            self.report.confirmed += 1


def _label(event: Any, index: int) -> str:
    try:
        _body, event_id = event_bytes(event)
    except (TypeError, ValueError):
        event_id = "?"
    return event_id if event_id != "?" else f"#{index + 1}"
