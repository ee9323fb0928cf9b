"""Callbacks in the operators' console and in /metrics: each publisher's health, an admin
sets a URL (the secret shown once), rotates the secret, replays dead letters; a viewer
may only look."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from notifier.app import Notifier
from notifier.ops.metrics import sample_value
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.callbacks import IncomingStatus
from notifier.store.operators import OperatorStore
from notifier.web.api import create_api
from tests.integration.test_console import PASSWORD, bearer, csrf_of, signed_in
from tests.support import ServedApi, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def app(pg_url: str, pg_database: Database) -> Iterator[Notifier]:
    notifier = Notifier(
        make_settings(
            database_url=pg_url,
            callbacks={"allowed_networks": ["127.0.0.1/32"], "allow_http": False},
        )
    )
    yield notifier
    notifier.close()


@pytest.fixture
def served(app: Notifier, pg_database: Database) -> Iterator[ServedApi]:
    operators = OperatorStore(pg_database)
    operators.add("lan.admin", PASSWORD, "admin")
    operators.add("minh.viewer", PASSWORD, "viewer")
    ApiKeys(pg_database).create("mot-cua-h29", ["publish"], ["H29"])
    with ServedApi(create_api(app)) as api:
        yield api


def _set(client: httpx.Client, url: str, publisher: str = "mot-cua-h29") -> httpx.Response:
    page = client.get("/console/callbacks")
    return client.post(
        "/console/callbacks/set",
        data={
            "csrf_token": csrf_of(page.text),
            "publisher": publisher,
            "kind": "api-key",
            "url": url,
        },
    )


def _dead_letter(app: Notifier, n: int) -> None:
    now = datetime.now(UTC)
    body = f'{{"schema": "notifier.status.v1", "id": "st-{n}"}}'
    app.callbacks.record([IncomingStatus(f"st-{n}", "delivery.failed", "H29", n, body)], now)
    for claim in app.callbacks.claim_due(now, 10, timedelta(minutes=1)):
        app.callbacks.failed(claim, now, "the receiver answered HTTP 500", 500, None)


def test_an_admin_sets_a_callback_and_sees_its_secret_once(served: ServedApi) -> None:
    admin = signed_in(served.base_url, "lan.admin")
    assert "No publisher has a callback yet." in admin.get("/console/callbacks?lang=en").text
    answer = _set(admin, "https://hooks.mot-cua.example.vn/notifier")
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    assert 'id="new-secret"' in answer.text
    assert "whsec_" in answer.text
    page = admin.get("/console/callbacks")
    assert 'data-publisher="mot-cua-h29"' in page.text
    assert "whsec_" not in page.text  # shown once
    # Setting the URL again keeps the secret and shows none.
    again = _set(admin, "https://hooks2.mot-cua.example.vn/notifier")
    assert again.status_code == 303


@pytest.mark.parametrize(
    "url",
    ["http://hooks.mot-cua.example.vn/x", "https://u:p@hooks.mot-cua.example.vn/x", "ftp://x"],
)
def test_a_callback_url_the_rules_refuse_is_not_saved(served: ServedApi, url: str) -> None:
    admin = signed_in(served.base_url, "lan.admin")
    answer = _set(admin, url)
    assert answer.status_code == 400
    assert 'data-publisher="mot-cua-h29"' not in answer.text


def test_a_callback_for_an_unknown_publisher_is_refused(served: ServedApi) -> None:
    admin = signed_in(served.base_url, "lan.admin")
    answer = _set(admin, "https://hooks.example.vn/x", publisher="nobody")
    assert answer.status_code == 400
    assert "no api-key named" in answer.text


def test_a_viewer_sees_callbacks_but_may_not_set_rotate_or_replay(
    served: ServedApi, app: Notifier
) -> None:
    admin = signed_in(served.base_url, "lan.admin")
    _set(admin, "https://hooks.mot-cua.example.vn/notifier")
    _dead_letter(app, 1)
    viewer = signed_in(served.base_url, "minh.viewer")
    page = viewer.get("/console/callbacks")
    assert page.status_code == 200
    assert 'id="callback-dead-letters"' in page.text
    token = csrf_of(page.text)
    for path, data in (
        ("/console/callbacks/set", {"publisher": "mot-cua-h29", "url": "https://x.example.vn"}),
        ("/console/callbacks/rotate", {"publisher": "mot-cua-h29", "kind": "api-key"}),
        ("/console/callbacks/replay", {"scope": "all"}),
    ):
        assert viewer.post(path, data={"csrf_token": token, **data}).status_code == 403
    assert app.callbacks.dead_count() == 1


def test_an_admin_replays_dead_letters_and_rotates_the_secret(
    served: ServedApi, app: Notifier
) -> None:
    admin = signed_in(served.base_url, "lan.admin")
    _set(admin, "https://hooks.mot-cua.example.vn/notifier")
    _dead_letter(app, 1)
    _dead_letter(app, 2)
    page = admin.get("/console/callbacks")
    (first,) = [d.callback_id for d in app.callbacks.dead_letters() if d.message_id == "st-1"]
    replayed = admin.post(
        "/console/callbacks/replay",
        data={"csrf_token": csrf_of(page.text), "scope": "selected", "ids": str(first)},
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/console/callbacks?replayed=1"
    assert [d.message_id for d in app.callbacks.dead_letters()] == ["st-2"]

    rotated = admin.post(
        "/console/callbacks/rotate",
        data={"csrf_token": csrf_of(page.text), "publisher": "mot-cua-h29", "kind": "api-key"},
    )
    assert rotated.status_code == 200
    assert "whsec_" in rotated.text
    target = app.callbacks.target("api-key", "mot-cua-h29")
    assert target is not None
    assert target.secrets_in_use == 2
    ended = admin.post(
        "/console/callbacks/rotate",
        data={
            "csrf_token": csrf_of(rotated.text),
            "publisher": "mot-cua-h29",
            "kind": "api-key",
            "action": "end",
        },
    )
    assert ended.status_code == 303
    target = app.callbacks.target("api-key", "mot-cua-h29")
    assert target is not None
    assert target.secrets_in_use == 1


def test_metrics_show_each_publishers_callback_health(
    served: ServedApi, app: Notifier, pg_database: Database
) -> None:
    admin = signed_in(served.base_url, "lan.admin")
    _set(admin, "https://hooks.mot-cua.example.vn/notifier")
    _dead_letter(app, 1)
    now = datetime.now(UTC)
    body = '{"schema": "notifier.status.v1", "id": "st-9"}'
    app.callbacks.record([IncomingStatus("st-9", "delivery.sent", "H29", 1, body)], now)
    key = ApiKeys(pg_database).create("prometheus", ["metrics"], [])
    text = httpx.get(f"{served.base_url}/metrics", headers=bearer(key)).text
    labels = {"publisher": "mot-cua-h29", "kind": "api-key"}
    assert sample_value(text, "notifier_callback_backlog", **labels) == 1
    assert sample_value(text, "notifier_callback_dead_letters", **labels) == 1
    assert sample_value(text, "notifier_callback_consecutive_failures", **labels) == 1
    assert sample_value(text, "notifier_callback_last_success_timestamp_seconds", **labels) == 0
    oldest = sample_value(text, "notifier_callback_oldest_pending_seconds", **labels)
    assert oldest is not None
    assert oldest >= 0
