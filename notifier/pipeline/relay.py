"""The status relay: publishes the outbox's status changes to the status stream.

Each worker process runs one (a background thread, like the sweeper). It takes pending
outbox rows in order (on PostgreSQL claimed ``FOR UPDATE SKIP LOCKED``, so relays in
several workers share the work without taking the same rows), publishes each to the
topic exchange ``notifier.statuses`` with publisher confirms, and marks them published
only after every confirm came back (:meth:`notifier.store.statuses.StatusOutbox.publish_pending`).

So a change is announced only once it committed (the row is written in its
transaction), and never lost after: a relay that dies between the publish and the mark
leaves its rows pending (the lock dies with its connection) and they are published
again, with the same message ``id``. Receivers dedupe on ``id`` and drop a delivery's
stale statuses by ``sequence`` (relays in several workers may publish two changes of one
delivery out of order).

The relay wakes on PostgreSQL's NOTIFY, which the outbox writer sends in the change's
transaction, and polls every ``NOTIFIER_STATUSES__INTERVAL_S`` besides (SQLite has no
NOTIFY: the embedded demo polls).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pika

from notifier.amqp import node_parameters
from notifier.background import BackgroundThread
from notifier.logging import get_logger
from notifier.settings import StatusSettings
from notifier.store import Database
from notifier.store.counters import fold_rows
from notifier.store.notify import STATUSES, Listener
from notifier.store.statuses import PendingStatus, StatusOutbox

log = get_logger(__name__)

CONTENT_TYPE = "application/json"


def declare_status_exchange(channel: Any, settings: StatusSettings) -> None:
    """The status stream's topic exchange (durable; idempotent)."""
    channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)


class StatusRelay(BackgroundThread):
    thread_name = "notifier-status-relay"
    # Seconds between AMQP heartbeats on the relay's connection (RabbitMQ closes it after
    # two missed).
    heartbeat_s = 30

    def __init__(self, database: Database, broker_url: str, settings: StatusSettings) -> None:
        super().__init__()
        self.outbox = StatusOutbox(database)
        self.listener = Listener(database, STATUSES)
        self.broker_url = broker_url
        self.settings = settings
        self._connection: Any = None
        self._channel: Any = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    published = self.relay_once()
                except Exception:  # the broker or the database may be down: try again
                    log.exception("status relay failed; the changes stay pending")
                    self._disconnect()
                    self.stopping.wait(self.settings.interval_s)
                    continue
                if published < self.settings.batch:
                    self._wait_for_changes()
        finally:
            self._disconnect()
            self.listener.close()

    def relay_once(self) -> int:
        """Publish one batch of pending changes; returns how many."""
        # The counters are folded as the rows are marked: no second write of each row.
        published = self.outbox.publish_pending(self.publish, self.settings.batch, fold=fold_rows)
        if published:
            log.debug("status changes published", count=published)
        return published

    def publish(self, pending: list[PendingStatus]) -> None:
        """Publish each change and wait for its confirm; raise if any is not confirmed
        (then none of the batch is marked, and all are published again later)."""
        channel = self._open_channel()
        for status in pending:
            channel.basic_publish(
                exchange=self.settings.exchange,
                routing_key=status.routing_key,
                body=json.dumps(status.message(), ensure_ascii=False).encode(),
                properties=pika.BasicProperties(
                    message_id=str(status.change_id),
                    content_type=CONTENT_TYPE,
                    type=status.type,
                    delivery_mode=2,
                    app_id="notifier",
                ),
            )

    def _wait_for_changes(self) -> None:
        """Until a change is notified, the poll interval passes, or the worker stops."""
        deadline = time.monotonic() + self.settings.interval_s
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._keep_alive()
            if not self.listener.available:
                self.stopping.wait(min(left, 1.0))
                continue
            try:
                # Short waits, so a stopping worker is not held up.
                if self.listener.wait(min(left, 1.0)):
                    return
            except Exception:  # the database may be down: poll instead
                log.warning("status relay cannot listen for changes; polling")
                self.stopping.wait(left)
                return

    def _keep_alive(self) -> None:
        """A ``BlockingConnection`` answers the broker's heartbeats only inside pika
        calls. A relay waiting for changes lets it, once a second: otherwise RabbitMQ
        closes an idle relay's connection (missed heartbeats) and its next publish fails
        first, logged as an error, before the relay reconnects."""
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        try:
            connection.process_data_events(time_limit=0)
        except Exception:  # closed by the broker or the network: reconnect on next publish
            log.info("status relay's broker connection was lost; it reconnects to publish")
            self._disconnect()

    def _open_channel(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._disconnect()
            self._connection = pika.BlockingConnection(
                node_parameters(self.broker_url, heartbeat=self.heartbeat_s)
            )
            channel = self._connection.channel()
            channel.confirm_delivery()
            declare_status_exchange(channel, self.settings)
            self._channel = channel
        return self._channel

    def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # already closed by the broker
                self._connection.close()
        self._connection = self._channel = None
