"""The portal inbox adapter against notifier's adapter contract kit, on a SQLite inbox."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from notifier_portal import PortalInboxAdapter

from notifier.adapter import AdapterContext
from notifier.store import Database
from notifier.store.inbox import InboxStore
from notifier.store.schema import inbox_notifications
from notifier.testing import AdapterContract, make_context

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Inbox:
    """The provider: a SQLite inbox of its own, which a test can take away."""

    database: Database
    store: InboxStore

    def drop(self) -> None:
        with self.database.begin() as connection:
            connection.execute(sa.text("DROP TABLE inbox_notifications"))

    def restore(self) -> None:
        inbox_notifications.create(self.database.engine, checkfirst=True)

    def newest_delivery_id(self) -> str | None:
        query = (
            sa.select(inbox_notifications.c.delivery_id)
            .order_by(inbox_notifications.c.notification_id.desc())
            .limit(1)
        )
        with self.database.engine.connect() as connection:
            found = connection.execute(query).scalar()
        return None if found is None else str(found)


class TestPortalContract(AdapterContract):
    adapter_class = PortalInboxAdapter
    templates_dir = REPO / "config" / "templates"
    not_applicable: ClassVar[dict[str, str]] = {
        "permanent_failure": (
            "the inbox is notifier's own database: no message is refused for good "
            "(an unavailable database is a temporary failure)"
        ),
        "timeout": "no remote provider; a stuck database is cut off by the worker's send timeout",
        "unreachable": "no network address; an unavailable database is the temporary scenario",
        "no_answer": "no HTTP request: the inbox is a database write in one transaction",
    }

    @contextmanager
    def provider(self) -> Iterator[Inbox]:
        with tempfile.TemporaryDirectory() as folder:
            database = Database(f"sqlite:///{folder}/inbox.db")
            inbox = Inbox(database, InboxStore(database))
            inbox.restore()
            try:
                yield inbox
            finally:
                database.dispose()

    def make_context(self, provider: Inbox) -> AdapterContext:
        return make_context(inbox=provider.store)

    def valid_settings(self, provider: Any) -> dict[str, Any]:
        return {"title_max_length": 120}

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [{"title_max_length": 5}, {"title_max_length": 301}, {"title_max_length": "long"}]

    def cause_temporary_failure(self, provider: Inbox) -> None:
        provider.drop()  # what an unavailable or broken database looks like to the adapter

    def recover(self, provider: Inbox) -> None:
        provider.restore()

    def sent_reference(self, provider: Inbox) -> str | None:
        return provider.newest_delivery_id()

    def expected_reference(self, delivery_id: uuid.UUID) -> str:
        return str(delivery_id)
