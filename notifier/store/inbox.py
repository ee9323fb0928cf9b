"""The portal inbox: notifications stored per citizen portal account, read by the portal."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa

from notifier.adapter import NewNotification
from notifier.store import Database
from notifier.store.notify import INBOX, notify
from notifier.store.schema import inbox_notifications as inbox
from notifier.store.schema import utcnow


@dataclass(frozen=True)
class InboxItem:
    id: int
    dossier_code: str
    agency_code: str
    status: str
    title: str
    body: str
    link: str | None
    created_at: datetime
    read_at: datetime | None


def _item(row: sa.Row[tuple[object, ...]]) -> InboxItem:
    m = row._mapping
    return InboxItem(
        id=m["notification_id"],
        dossier_code=m["dossier_code"],
        agency_code=m["agency_code"],
        status=m["status"],
        title=m["title"],
        body=m["body"],
        link=m["link"],
        created_at=m["created_at"],
        read_at=m["read_at"],
    )


def account_key(account_id: str) -> str:
    """What a notification about an account carries to the live streams: enough to
    wake only that account's streams, not the account id itself."""
    return hashlib.sha256(account_id.encode("utf-8", errors="surrogatepass")).hexdigest()[:20]


class InboxStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(
        self,
        *,
        delivery_id: UUID,
        account_id: str,
        agency_code: str,
        dossier_code: str,
        status: str,
        title: str,
        body: str,
        link: str | None,
    ) -> int:
        """Store one notification; the delivery id makes a repeated add a no-op."""
        notification = NewNotification(
            delivery_id, account_id, agency_code, dossier_code, status, title, body, link
        )
        return self.add_many([notification])[delivery_id]

    def add_many(self, notifications: Sequence[NewNotification]) -> dict[UUID, int]:
        """Store notifications in one transaction; delivery id → notification id. A
        delivery stored before keeps its notification (and its id)."""
        if not notifications:
            return {}
        now = utcnow()
        with self.database.begin() as connection:
            connection.execute(
                self.database.insert_ignore(inbox, "delivery_id"),
                [
                    {
                        "delivery_id": n.delivery_id,
                        "account_id": n.account_id,
                        "agency_code": n.agency_code,
                        "dossier_code": n.dossier_code,
                        "status": n.status,
                        "title": n.title,
                        "body": n.body,
                        "link": n.link or None,
                        "created_at": now,
                    }
                    for n in notifications
                ],
            )
            # Live streams of these accounts wake when this commits (PostgreSQL).
            for key in sorted({account_key(n.account_id) for n in notifications}):
                notify(connection, INBOX, key)
            found = connection.execute(
                sa.select(inbox.c.delivery_id, inbox.c.notification_id).where(
                    inbox.c.delivery_id.in_([n.delivery_id for n in notifications])
                )
            ).all()
        return {row.delivery_id: int(row.notification_id) for row in found}

    def list(
        self,
        account_id: str,
        *,
        limit: int = 20,
        before_id: int | None = None,
        unread_only: bool = False,
        after_id: int | None = None,
    ) -> list[InboxItem]:
        """Newest first; page with ``before_id`` (the last id of the previous page)."""
        query = sa.select(inbox).where(inbox.c.account_id == account_id)
        if before_id is not None:
            query = query.where(inbox.c.notification_id < before_id)
        if after_id is not None:
            query = query.where(inbox.c.notification_id > after_id)
        if unread_only:
            query = query.where(inbox.c.read_at.is_(None))
        query = query.order_by(inbox.c.notification_id.desc()).limit(limit)
        with self.database.engine.connect() as connection:
            return [_item(row) for row in connection.execute(query)]

    def unread_count(self, account_id: str) -> int:
        query = sa.select(sa.func.count()).where(
            inbox.c.account_id == account_id, inbox.c.read_at.is_(None)
        )
        with self.database.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def mark_read(self, account_id: str, notification_id: int | None = None) -> int:
        """Mark one notification (or all of the account's) read; returns how many changed."""
        query = (
            sa.update(inbox)
            .where(inbox.c.account_id == account_id, inbox.c.read_at.is_(None))
            .values(read_at=utcnow())
        )
        if notification_id is not None:
            query = query.where(inbox.c.notification_id == notification_id)
        with self.database.begin() as connection:
            return int(connection.execute(query).rowcount)

    def latest_id(self, account_id: str) -> int:
        query = sa.select(sa.func.max(inbox.c.notification_id)).where(
            inbox.c.account_id == account_id
        )
        with self.database.engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)
