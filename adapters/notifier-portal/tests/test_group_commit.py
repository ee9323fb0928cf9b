"""The portal adapter stores concurrent sends together, each under its own id."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import UUID

import pytest
from notifier_portal import PortalInboxAdapter

from notifier.adapter import OutboundMessage, TemporaryFailure
from notifier.store import Database
from notifier.store.inbox import InboxStore, NewNotification
from notifier.store.schema import inbox_notifications
from notifier.testing import make_context, sample_message


class CountingInbox(InboxStore):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.writes: list[int] = []
        self.down = False

    def add_many(self, notifications: Sequence[NewNotification]) -> dict[UUID, int]:
        self.writes.append(len(notifications))
        if self.down:
            raise ConnectionError("database gone")
        return super().add_many(notifications)


@pytest.fixture
def inbox() -> Iterator[CountingInbox]:
    with tempfile.TemporaryDirectory() as folder:
        database = Database(f"sqlite:///{Path(folder) / 'inbox.db'}")
        inbox_notifications.create(database.engine)
        try:
            yield CountingInbox(database)
        finally:
            database.dispose()


def message(delivery_id: UUID) -> OutboundMessage:
    return sample_message(PortalInboxAdapter, delivery_id=delivery_id)


def adapter(inbox: InboxStore) -> PortalInboxAdapter:
    settings = PortalInboxAdapter.settings_model()
    return PortalInboxAdapter(settings, make_context(inbox=inbox))


def test_concurrent_sends_share_transactions_and_keep_their_own_ids(
    inbox: CountingInbox,
) -> None:
    portal = adapter(inbox)
    ids = [uuid.uuid4() for _ in range(60)]

    async def send_all() -> list[str | None]:
        results = await asyncio.gather(*(portal.send(message(i)) for i in ids))
        return [r.provider_message_id for r in results]

    stored = asyncio.run(send_all())
    assert sum(inbox.writes) == 60
    assert len(inbox.writes) < 60  # one send alone is one write; these were grouped
    assert len(set(stored)) == 60
    again = asyncio.run(portal.send(message(ids[7])))  # a repeat keeps its notification
    assert again.provider_message_id == stored[7]


def test_a_failed_write_fails_each_send_of_its_group_temporarily(inbox: CountingInbox) -> None:
    portal = adapter(inbox)
    inbox.down = True

    async def send_two() -> list[BaseException | object]:
        sends = (portal.send(message(uuid.uuid4())) for _ in range(2))
        return await asyncio.gather(*sends, return_exceptions=True)

    outcomes = asyncio.run(send_two())
    assert all(isinstance(o, TemporaryFailure) for o in outcomes), outcomes
    assert "ConnectionError" in str(outcomes[0])
    inbox.down = False
    assert asyncio.run(portal.send(message(uuid.uuid4()))).delivered
