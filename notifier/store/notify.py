"""PostgreSQL LISTEN/NOTIFY: a committed change wakes its readers instead of their polling.

A writer calls :func:`notify` inside its transaction; PostgreSQL delivers the
notification only if that transaction commits (a rolled-back change wakes nobody). A
reader holds a :class:`Listener` (one connection of its own, outside the pool) and
waits on it. SQLite has no such thing: :func:`notify` does nothing there and
:attr:`Listener.available` is false, so readers fall back to polling (the embedded demo).
A notification is a hint, never the data: a reader that misses one (its connection
dropped) still finds the change at its next poll.
"""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from notifier.logging import get_logger
from notifier.store.database import Database

log = get_logger(__name__)

STATUSES = "notifier_statuses"  # a status change was recorded in the outbox
INBOX = "notifier_inbox"  # a portal inbox notification was stored


def notify(connection: Connection, channel: str, payload: str = "") -> None:
    """Wake ``channel``'s listeners when the caller's transaction commits (PostgreSQL)."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            sa.text("SELECT pg_notify(:channel, :payload)"),
            {
                "channel": channel,
                "payload": payload,
            },
        )


class Listener:
    """Waits for notifications on one channel, over a connection of its own.

    Not thread-safe: one per reading thread. The connection is opened on the first
    wait and again after it fails."""

    def __init__(self, database: Database, channel: str) -> None:
        self.database = database
        self.channel = channel
        self._connection: Any = None

    @property
    def available(self) -> bool:
        return not self.database.is_sqlite

    def wait(self, timeout: float) -> list[str]:
        """The payloads notified within ``timeout`` seconds (at least one, or none on
        timeout). Raises if the database cannot be reached (callers poll instead)."""
        connection = self._connect()
        try:
            received = [n.payload for n in connection.notifies(timeout=timeout, stop_after=1)]
            # Others that came together are taken at once, without waiting.
            received += [n.payload for n in connection.notifies(timeout=0)]
        except Exception:
            self.close()
            raise
        return received

    def _connect(self) -> Any:
        if self._connection is None:
            import psycopg

            url = sa.engine.make_url(self.database.url).set(drivername="postgresql")
            connection = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            connection.execute(f"LISTEN {self.channel}")
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # already gone
                self._connection.close()
            self._connection = None
