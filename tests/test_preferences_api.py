"""The preferences API (issue 18): the portal's key (scope ``preferences``) sets and reads
a citizen's choices, idempotently, audited; no other scope may, and that key may do
nothing else. Served by a real uvicorn over PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.preferences import IdentityKind, PreferenceStore
from notifier.store.schema import preference_changes, preferences
from notifier.web.api import create_api
from tests.support import ServedApi, make_settings

PHONE = "0901 234 567"


@pytest.fixture
def app(pg_database: Database) -> Iterator[Notifier]:
    app = Notifier(make_settings(database_url=pg_database.url))
    yield app
    app.close()


@pytest.fixture
def api(app: Notifier) -> Iterator[ServedApi]:
    with ServedApi(create_api(app)) as served:
        yield served


def call(api: ServedApi, method: str, path: str, key: str | None, body: object) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.request(
        method, f"{api.base_url}{path}", content=json.dumps(body).encode(), headers=headers
    )


def test_the_portal_key_sets_and_reads_preferences_idempotently_and_each_change_is_audited(
    app: Notifier, api: ServedApi, pg_database: Database
) -> None:
    portal = ApiKeys(pg_database).create("cong-dvc", ["preferences"], [])
    choice = {"phone": PHONE, "channels": {"sms": False}, "language": "en", "quiet_hours": False}
    first = call(api, "PUT", "/v1/preferences", portal, choice)
    assert first.status_code == 200, first.text
    assert first.json()["changed"] is True
    assert first.json()["channels"] == {"email": True, "sms": False, "zalo": True, "portal": True}
    again = call(api, "PUT", "/v1/preferences", portal, {**choice, "phone": "+84901234567"})
    assert again.json()["changed"] is False  # the same citizen, the same choice
    read = call(api, "POST", "/v1/preferences/lookup", portal, {"phone": "84901234567"})
    assert read.status_code == 200
    assert read.json()["language"] == "en"
    assert read.json()["quiet_hours"] is False
    assert read.json()["stored"] is True
    assert PHONE.replace(" ", "") not in read.text  # masked
    back = call(api, "PUT", "/v1/preferences", portal, {"phone": PHONE})  # the defaults
    assert back.json()["changed"] is True
    store = PreferenceStore(pg_database, app.settings.recipient_hash_key.get_secret_value())
    audit = store.changes(IdentityKind.PHONE, PHONE)
    assert [row["changed_by"] for row in audit] == ["api-key:cong-dvc"] * 2
    assert audit[0]["before"] is None
    assert audit[0]["after"]["channels_off"] == ["sms"]
    assert audit[1]["before"] == audit[0]["after"]
    assert audit[1]["after"] == {"channels_off": [], "language": None, "quiet_hours": True}
    # The same privacy as opt-outs: no contact in clear in either table.
    with pg_database.engine.connect() as connection:
        stored = [
            dict(row._mapping)
            for table in (preferences, preference_changes)
            for row in connection.execute(sa.select(table))
        ]
    assert "901234567" not in json.dumps(stored, default=str)


def test_the_portal_cannot_turn_the_inbox_off_and_bad_input_is_a_clear_422(
    api: ServedApi, pg_database: Database
) -> None:
    portal = ApiKeys(pg_database).create("cong-dvc", ["preferences"], [])
    refused = call(
        api, "PUT", "/v1/preferences", portal, {"account_id": "a", "channels": {"portal": False}}
    )
    assert refused.status_code == 422
    two = call(api, "PUT", "/v1/preferences", portal, {"account_id": "a", "phone": PHONE})
    assert two.status_code == 422
    assert "exactly one" in two.text
    language = call(api, "PUT", "/v1/preferences", portal, {"account_id": "a", "language": "fr"})
    assert language.status_code == 422


def test_only_the_preferences_scope_may_use_the_preferences_api_and_it_may_do_nothing_else(
    api: ServedApi, pg_database: Database
) -> None:
    keys = ApiKeys(pg_database)
    portal = keys.create("cong-dvc", ["preferences"], [])
    body = {"account_id": "vneid-1", "channels": {"email": False}}
    assert call(api, "PUT", "/v1/preferences", None, body).status_code == 401
    for scope in ("publish", "inbox", "operator", "metrics"):
        other = keys.create(f"key-{scope}", [scope], [])
        assert call(api, "PUT", "/v1/preferences", other, body).status_code == 403, scope
        lookup = call(api, "POST", "/v1/preferences/lookup", other, {"account_id": "vneid-1"})
        assert lookup.status_code == 403, scope
    admin = keys.create("admin", ["operator", "admin"], [])
    assert call(api, "PUT", "/v1/preferences", admin, body).status_code == 403
    # The portal's key sets preferences only: no events, opt-outs or delivery search.
    event = sample_event(0)
    assert call(api, "POST", "/v1/events", portal, event).status_code == 403
    opt_out = {"channel": "sms", "recipient": PHONE}
    assert call(api, "POST", "/v1/opt-outs", portal, opt_out).status_code == 403
    assert call(api, "POST", "/v1/deliveries/search", portal, {}).status_code == 403
    assert call(api, "PUT", "/v1/preferences", portal, body).status_code == 200
