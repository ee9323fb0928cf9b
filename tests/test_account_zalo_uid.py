"""Zalo by UID from the portal account (issue 19, item 3): the portal's key stores an
account's Zalo user id (encrypted, audited masked, removable), and planning sends
"zalo|sms" by that UID for an event naming the account that carries none itself. The
API is served by a real uvicorn; both run on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from notifier.app import Notifier
from notifier.events import DossierStatusEvent
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.preferences import IdentityKind, Preference, PreferenceStore
from notifier.store.schema import preference_changes, preferences
from notifier.testing import capture_logs
from notifier.web.api import create_api
from tests.support import ServedApi, make_settings
from tests.test_cheapest_channel import ONE_OF, PHONE, app_with, planned

ACCOUNT = "vneid-0123456789"
UID = "4368496045530239152"
OTHER_UID = "7001234567890123456"


@pytest.fixture
def served(database: Database) -> Iterator[tuple[Notifier, ServedApi]]:
    app = Notifier(make_settings(database_url=database.url))
    with ServedApi(create_api(app)) as api:
        yield app, api
    app.close()


def call(api: ServedApi, method: str, path: str, key: str, body: object) -> httpx.Response:
    return httpx.request(
        method,
        f"{api.base_url}{path}",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )


def stored_rows(database: Database) -> list[dict[str, object]]:
    with database.engine.connect() as connection:
        return [
            dict(row._mapping)
            for table in (preferences, preference_changes)
            for row in connection.execute(sa.select(table))
        ]


def test_the_portal_sets_reads_and_removes_an_accounts_zalo_user_id_audited_and_never_in_clear(
    served: tuple[Notifier, ServedApi], database: Database
) -> None:
    app, api = served
    portal = ApiKeys(database).create("cong-dvc", ["preferences"], [])
    body = {"account_id": ACCOUNT, "zalo_user_id": UID}
    with capture_logs("DEBUG") as logs:
        first = call(api, "PUT", "/v1/preferences", portal, body)
        again = call(api, "PUT", "/v1/preferences", portal, body)
        read = call(api, "POST", "/v1/preferences/lookup", portal, {"account_id": ACCOUNT})
        rows_while_set = stored_rows(database)
        removed = call(api, "PUT", "/v1/preferences", portal, {"account_id": ACCOUNT})
        after = call(api, "POST", "/v1/preferences/lookup", portal, {"account_id": ACCOUNT})
    assert first.status_code == 200, first.text
    assert first.json()["changed"] is True
    assert again.json()["changed"] is False  # the same id again: an idempotent PUT
    assert read.json()["zalo_user_id"] == "*" * (len(UID) - 3) + UID[-3:]
    assert read.json()["stored"] is True
    assert removed.json()["changed"] is True
    assert after.json()["zalo_user_id"] is None
    for answer in (first, again, read, removed, after):
        assert UID not in answer.text
    # Stored encrypted: the preferences row holds a ciphertext, the audit a masked id.
    assert rows_while_set[0]["zalo_user_id"]
    assert UID not in json.dumps(rows_while_set + stored_rows(database), default=str)
    store = PreferenceStore(
        database,
        app.settings.recipient_hash_key.get_secret_value(),
        app.settings.secret_key.get_secret_value(),
    )
    audit = store.changes(IdentityKind.ACCOUNT, ACCOUNT)
    assert [row["changed_by"] for row in audit] == ["api-key:cong-dvc"] * 2
    assert audit[0]["after"]["zalo_user_id"] == "*" * (len(UID) - 3) + UID[-3:]
    assert audit[1]["before"] == audit[0]["after"]
    assert "zalo_user_id" not in audit[1]["after"]
    assert UID not in logs.text
    assert "preferences changed" in logs.text  # the capture did see the changes


def test_a_zalo_user_id_only_goes_on_a_portal_account_and_must_be_digits(
    served: tuple[Notifier, ServedApi], database: Database
) -> None:
    _app, api = served
    portal = ApiKeys(database).create("cong-dvc", ["preferences"], [])
    on_phone = call(api, "PUT", "/v1/preferences", portal, {"phone": PHONE, "zalo_user_id": UID})
    assert on_phone.status_code == 422
    assert "portal account" in on_phone.text
    assert UID not in on_phone.text
    not_digits = call(
        api, "PUT", "/v1/preferences", portal, {"account_id": ACCOUNT, "zalo_user_id": "abc-12345"}
    )
    assert not_digits.status_code == 422
    assert "abc-12345" not in not_digits.text  # the 422 does not echo the input
    assert stored_rows(database) == []


@pytest.fixture
def app(tmp_path: Path, database: Database) -> Iterator[Notifier]:
    notifier = app_with(tmp_path, database, ONE_OF)
    yield notifier
    notifier.close()


def set_account_uid(app: Notifier, user_id: str | None, *, secret_key: str | None = None) -> None:
    PreferenceStore(
        app.database,
        app.settings.recipient_hash_key.get_secret_value(),
        secret_key or app.settings.secret_key.get_secret_value(),
    ).put(IdentityKind.ACCOUNT, ACCOUNT, Preference(zalo_user_id=user_id), changed_by="test")


def test_one_of_sends_zalo_by_the_accounts_user_id_when_the_event_carries_none(
    app: Notifier,
) -> None:
    set_account_uid(app, UID)
    found = planned(app, {"phone": PHONE, "portal_account_id": ACCOUNT})
    assert found == {"portal": (ACCOUNT, "queued"), "zalo": (f"uid:{UID}", "queued")}
    # With a Zalo phone in the event too, the account's UID is still the cheaper way.
    found = planned(app, {"zalo": {"phone": PHONE}, "portal_account_id": ACCOUNT})
    assert found["zalo"] == (f"uid:{UID}", "queued")


def test_the_events_own_zalo_user_id_wins_over_the_accounts(app: Notifier) -> None:
    set_account_uid(app, UID)
    found = planned(
        app, {"phone": PHONE, "zalo": {"user_id": OTHER_UID}, "portal_account_id": ACCOUNT}
    )
    assert found["zalo"] == (f"uid:{OTHER_UID}", "queued")


def test_without_a_stored_user_id_or_with_it_removed_zalo_goes_to_the_phone(
    app: Notifier,
) -> None:
    assert planned(app, {"phone": PHONE, "portal_account_id": ACCOUNT})["zalo"] == (
        "+84901888484",
        "queued",
    )
    set_account_uid(app, UID)
    set_account_uid(app, None)  # removed
    assert planned(app, {"phone": PHONE, "portal_account_id": ACCOUNT})["zalo"] == (
        "+84901888484",
        "queued",
    )
    # Another account's id is not this one's.
    set_account_uid(app, UID)
    assert planned(app, {"phone": PHONE, "portal_account_id": "someone-else"})["zalo"] == (
        "+84901888484",
        "queued",
    )


def test_an_id_stored_under_another_secret_key_is_unreadable_and_zalo_goes_by_phone(
    app: Notifier,
) -> None:
    set_account_uid(app, UID, secret_key="a-key-this-service-no-longer-has-" + "x" * 16)
    with capture_logs("DEBUG") as logs:
        found = planned(app, {"phone": PHONE, "portal_account_id": ACCOUNT})
    assert found["zalo"] == ("+84901888484", "queued")
    assert "cannot be decrypted" in logs.text
    assert UID not in logs.text


def test_a_failed_send_by_the_accounts_user_id_falls_back_to_zns_by_phone(app: Notifier) -> None:
    set_account_uid(app, UID)
    raw = sample_event(
        0, event_id=uuid.uuid4(), contacts={"phone": PHONE, "portal_account_id": ACCOUNT}
    )
    raw["dossier"]["status"] = "result_ready"
    event = DossierStatusEvent.model_validate_json(json.dumps(raw, ensure_ascii=False))
    (zalo,) = [p for p in app.planner.plan(event) if p.channel == "zalo"]
    assert zalo.recipient == f"uid:{UID}"
    fallback = app.planner.plan_fallback(event, "zalo", zalo.recipient)
    assert [(p.channel, p.recipient) for p in fallback] == [("zalo", "+84901888484")]
