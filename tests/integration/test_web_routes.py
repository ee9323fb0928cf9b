"""The HTTP API as module-level routers (issue 15): the same operations as before, one
``require_scope`` for every API-key route, and the one delivery search (paged, with a
total) beside the deprecated ``GET /v1/deliveries``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import SCOPES, ApiKeys
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.web.api import create_api
from notifier.web.deliveries import LIST_DEPRECATED_SINCE, SEARCH_PATH
from tests.support import ServedApi, make_settings

pytestmark = pytest.mark.integration

# The operations of the OpenAPI document before the routes left their factory functions
# (main at bb3db0a, read from /openapi.json): clients and the fuzz test rely on them.
OPERATIONS_BEFORE = {
    ("DELETE", "/v1/opt-outs"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/dead-letters"),
    ("GET", "/v1/deliveries"),
    ("GET", "/v1/deliveries/{delivery_id}/attempts"),
    ("GET", "/v1/dossiers/{code}"),
    ("GET", "/v1/inbound-sms/{provider}"),
    ("GET", "/v1/inbound-sms/{provider}/{token}"),
    ("GET", "/v1/inbox/{account_id}/notifications"),
    ("GET", "/v1/inbox/{account_id}/stream"),
    ("GET", "/v1/inbox/{account_id}/unread-count"),
    ("GET", "/v1/overview"),
    ("GET", "/v1/providers"),
    ("GET", "/v1/receipts/{provider}"),
    ("GET", "/v1/receipts/{provider}/{token}"),
    ("GET", "/v1/rejects"),
    ("GET", "/v1/reports"),
    ("POST", "/v1/dead-letters/replay"),
    ("POST", "/v1/deliveries/search"),
    ("POST", "/v1/deliveries/{delivery_id}/replay"),
    ("POST", "/v1/deliveries/{delivery_id}/resolve"),
    ("POST", "/v1/events"),
    ("POST", "/v1/inbound-sms/{provider}"),
    ("POST", "/v1/inbound-sms/{provider}/{token}"),
    ("POST", "/v1/inbox/{account_id}/notifications/{notification_id}/read"),
    ("POST", "/v1/inbox/{account_id}/read-all"),
    ("POST", "/v1/opt-outs"),
    ("POST", "/v1/receipts/{provider}"),
    ("POST", "/v1/receipts/{provider}/{token}"),
    ("POST", "/v1/rejects/replay"),
}
# Operations added since, each by its issue.
OPERATIONS_ADDED = {
    ("GET", "/v1/events/{event_id}"),  # issue 17: the status API
    ("GET", "/v1/dossiers/{code}/notifications"),  # issue 17: the status API
    ("PUT", "/v1/preferences"),  # issue 18: the citizen's preferences
    ("POST", "/v1/preferences/lookup"),  # issue 18
}
# Routes that take an API key of exactly one scope (require_scope), and that scope.
KEY_ROUTES = {
    ("POST", "/v1/events"): "publish",
    ("GET", "/v1/events/00000000-0000-0000-0000-000000000001"): "publish",
    ("GET", "/v1/dossiers/000.00.12.H29-261203-0001/notifications"): "publish",
    ("GET", "/v1/inbox/acc-1/notifications"): "inbox",
    ("GET", "/v1/inbox/acc-1/unread-count"): "inbox",
    ("POST", "/v1/inbox/acc-1/read-all"): "inbox",
    ("POST", "/v1/opt-outs"): "inbox",
    ("GET", "/v1/deliveries"): "operator",
    (
        "GET",
        "/v1/deliveries/00000000-0000-0000-0000-000000000001/attempts",
    ): "operator",
    ("GET", "/v1/rejects"): "operator",
    ("PUT", "/v1/preferences"): "preferences",
    ("POST", "/v1/preferences/lookup"): "preferences",
}


@pytest.fixture
def app(pg_url: str, pg_database: Database) -> Iterator[Notifier]:
    # Email is enabled (nothing is sent: ingest only records the planned deliveries).
    notifier = Notifier(
        make_settings(database_url=pg_url, adapters={"email": {"host": "127.0.0.1", "port": 9}})
    )
    yield notifier
    notifier.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ingest_one(app: Notifier, index: int) -> uuid.UUID:
    """A real event through ingest: its deliveries are in the log (nothing sent)."""
    event_id = uuid.uuid4()
    event = sample_event(index, status=Status.RESULT_READY, event_id=event_id)
    result = app.ingest.handle(json.dumps(event, ensure_ascii=False), source="amqp")
    assert result.outcome == "accepted"
    return event_id


def test_the_openapi_document_keeps_every_operation_it_had_before_the_routers_moved(
    app: Notifier,
) -> None:
    document = create_api(app).openapi()
    operations = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert operations == OPERATIONS_BEFORE | OPERATIONS_ADDED


def test_every_api_key_route_refuses_a_missing_key_and_a_key_without_its_scope(
    app: Notifier, pg_database: Database
) -> None:
    keys = ApiKeys(pg_database)
    # Every other scope (admin implies operator, so it is left out of the operator case).
    implies = {"operator": {"admin"}}
    without = {
        scope: keys.create(
            f"all-but-{scope}", sorted(set(SCOPES) - {scope} - implies.get(scope, set())), []
        )
        for scope in SCOPES
    }
    with ServedApi(create_api(app)) as api, httpx.Client(base_url=api.base_url) as client:
        for (method, path), scope in KEY_ROUTES.items():
            missing = client.request(method, path)
            assert missing.status_code == 401, (method, path)
            assert missing.headers["www-authenticate"] == "Bearer"
            revoked = client.request(method, path, headers=bearer("ntf_not-a-key"))
            assert revoked.status_code == 401, (method, path)
            lacking = client.request(method, path, headers=bearer(without[scope]))
            assert lacking.status_code == 403, (method, path)
            assert lacking.json() == {"detail": f"this key lacks the {scope!r} scope"}
        # /metrics takes any of three scopes: a key with only "inbox" is refused.
        inbox_only = keys.create("portal", ["inbox"], [])
        assert client.get("/metrics", headers=bearer(inbox_only)).status_code == 403
        assert client.get("/metrics").status_code == 401


def test_the_delivery_search_pages_with_a_total_and_filters_as_the_old_list_did(
    app: Notifier, pg_database: Database
) -> None:
    first = ingest_one(app, 1)
    ingest_one(app, 2)
    key = ApiKeys(pg_database).create("monitoring", ["operator"], [])
    with ServedApi(create_api(app)) as api, httpx.Client(base_url=api.base_url) as client:
        everything = client.post(SEARCH_PATH, json={}, headers=bearer(key))
        assert everything.status_code == 200
        assert "deprecation" not in everything.headers
        total = everything.json()["total"]
        assert total >= 2
        page = client.post(SEARCH_PATH, json={"page": 2, "page_size": 1}, headers=bearer(key))
        assert page.json()["total"] == total
        assert (page.json()["page"], page.json()["page_size"]) == (2, 1)
        assert page.json()["items"] == [everything.json()["items"][1]]
        # The old list's filters are all here, event_id included.
        one_event = client.post(SEARCH_PATH, json={"event_id": str(first)}, headers=bearer(key))
        items = one_event.json()["items"]
        assert items
        assert {i["event_id"] for i in items} == {str(first)}
        assert one_event.json()["total"] == len(items)
        queued = client.post(
            SEARCH_PATH, json={"status": DeliveryStatus.QUEUED.value}, headers=bearer(key)
        )
        assert queued.json()["total"] == total  # ingest leaves every delivery queued
        bogus = client.post(SEARCH_PATH, json={"status": "queud"}, headers=bearer(key))
        assert bogus.status_code == 422


def test_the_old_delivery_list_still_answers_marked_deprecated_with_a_link_to_the_search(
    app: Notifier, pg_database: Database
) -> None:
    event_id = ingest_one(app, 3)
    key = ApiKeys(pg_database).create("monitoring", ["operator"], [])
    api_app = create_api(app)
    operation = api_app.openapi()["paths"]["/v1/deliveries"]["get"]
    assert operation["deprecated"] is True
    assert "deprecated" not in api_app.openapi()["paths"][SEARCH_PATH]["post"]
    with ServedApi(api_app) as api, httpx.Client(base_url=api.base_url) as client:
        old = client.get(
            "/v1/deliveries", params={"event_id": str(event_id), "limit": 1}, headers=bearer(key)
        )
        assert old.status_code == 200
        assert [i["event_id"] for i in old.json()["items"]] == [str(event_id)]
        assert set(old.json()) == {"items"}  # the body it always had
        # RFC 9745: the moment it was deprecated, as a structured-field date.
        assert old.headers["deprecation"] == f"@{int(LIST_DEPRECATED_SINCE.timestamp())}"
        assert old.headers["link"] == f'<{SEARCH_PATH}>; rel="successor-version"'
