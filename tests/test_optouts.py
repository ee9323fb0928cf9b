"""Opt-outs at ingest (issue 9, point 4), on SQLite and PostgreSQL: an opted-out
(recipient, channel) is recorded "suppressed", never enqueued, also when the event
is redelivered; other channels and other citizens are untouched."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.optouts import OptOutStore, canonical_recipient
from notifier.store.schema import deliveries, opt_outs
from tests.support import make_settings

EMAIL = "Minh.Khai@Example.vn"


@pytest.fixture
def app(database: Database) -> Any:
    app = Notifier(make_settings(database_url=database.url))
    yield app
    app.close()


def event(email: str = EMAIL) -> dict[str, Any]:
    return sample_event(
        2,
        status=Status.SUBMITTED,  # portal and email
        event_id=uuid.uuid4(),
        contacts={"email": email, "portal_account_id": "acc-9"},
    )


def statuses(database: Database, event_id: str) -> dict[str, str]:
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(deliveries.c.channel, deliveries.c.status).where(
                deliveries.c.event_id == uuid.UUID(event_id)
            )
        )
        return {row.channel: row.status for row in rows}


def test_an_opted_out_channel_is_suppressed_and_not_enqueued(
    app: Notifier, database: Database
) -> None:
    store = OptOutStore(database, app.settings.recipient_hash_key.get_secret_value())
    assert store.add(" minh.khai@example.VN ", "email", "portal") is True
    assert store.add(EMAIL, "email", "portal") is False  # the same citizen, any case
    first = event()
    raw = json.dumps(first, ensure_ascii=False)
    result = app.ingest.handle(raw, source="test")
    assert result.outcome == "accepted"
    assert [channel for _id, channel in result.to_enqueue] == ["portal"]
    assert statuses(database, first["event_id"]) == {"portal": "queued", "email": "suppressed"}
    # A redelivered event re-enqueues only what may still be sent.
    again = app.ingest.handle(raw, source="test")
    assert [channel for _id, channel in again.to_enqueue] == ["portal"]
    # Someone else's email is not affected; nor is this citizen after opting back in.
    other = event("someone@example.vn")
    app.ingest.handle(json.dumps(other, ensure_ascii=False), source="test")
    assert statuses(database, other["event_id"])["email"] == "queued"
    assert store.remove(EMAIL, "email") is True
    back = event()
    app.ingest.handle(json.dumps(back, ensure_ascii=False), source="test")
    assert statuses(database, back["event_id"])["email"] == "queued"


def test_an_event_whose_every_channel_is_opted_out_is_kept_not_rejected(
    app: Notifier, database: Database
) -> None:
    store = OptOutStore(database, app.settings.recipient_hash_key.get_secret_value())
    store.add(EMAIL, "email", "portal")
    store.add("acc-9", "portal", "portal")
    only = event()
    result = app.ingest.handle(json.dumps(only, ensure_ascii=False), source="test")
    assert result.outcome == "accepted"
    assert result.to_enqueue == []
    assert statuses(database, only["event_id"]) == {"portal": "suppressed", "email": "suppressed"}


def test_opt_outs_are_stored_hashed_and_phones_in_any_form_are_one(
    app: Notifier, database: Database
) -> None:
    store = OptOutStore(database, app.settings.recipient_hash_key.get_secret_value())
    store.add("0901 888 484", "sms", "operator")
    for written in ("+84901888484", "84 90 188 8484", "090.188.8484"):
        assert store.is_opted_out(written, "sms"), written
    assert not store.is_opted_out("0901888484", "zalo")  # per channel
    assert canonical_recipient("0901-888-484") == "+84901888484"
    with database.engine.connect() as connection:
        stored = [dict(r) for r in connection.execute(sa.select(opt_outs)).mappings()]
    assert "901888484" not in json.dumps(stored, default=str)
