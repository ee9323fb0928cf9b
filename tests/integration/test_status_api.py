"""The status API for publishers (issue 17, items 1 and 5) over a real uvicorn and
PostgreSQL: a key sees its own agencies' events, deliveries and rejects; another
agency's event or dossier is 404 exactly like one that does not exist; statuses stay
queryable after the retention purge, with contacts purged."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from notifier_simulators.smtp import SmtpCatcher

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.retention import Retention
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.schema import utcnow
from notifier.web.api import create_api
from tests.support import RunningWorker, ServedApi, make_settings, wait_until

pytestmark = pytest.mark.integration

AGENCY_A, AGENCY_B = "000.00.12.H29", "000.00.20.H56"  # sample_event(0) and sample_event(1)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as catcher:
        yield catcher


@pytest.fixture
def local_app(pg_url: str, pg_database: Database, smtp: SmtpCatcher) -> Iterator[Notifier]:
    app = Notifier(
        make_settings(
            database_url=pg_url,
            adapters={"email": {"host": "127.0.0.1", "port": smtp.port}},
            worker={"min_backoff_ms": 50, "max_backoff_ms": 500, "send_timeout_s": 10},
        )
    )
    yield app
    app.close()


def event_of(index: int, email: str = "citizen.a@example.com") -> dict[str, Any]:
    event = sample_event(index, status=Status.RESULT_READY, event_id=uuid.uuid4())
    event["applicant"]["contacts"] = {"email": email}
    return event


def test_a_key_sees_its_agencys_event_and_dossier_and_another_agencys_key_gets_404(
    local_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    keys = ApiKeys(pg_database)
    key_a = keys.create("motcua-a", ["publish"], [AGENCY_A])
    key_a2 = keys.create("motcua-a-2", ["publish"], [AGENCY_A])
    key_b = keys.create("motcua-b", ["publish"], [AGENCY_B])
    inbox_only = keys.create("portal", ["inbox"], [])
    event = event_of(0)
    with RunningWorker(local_app), ServedApi(create_api(local_app)) as api:
        posted = httpx.post(f"{api.base_url}/v1/events", json=event, headers=bearer(key_a))
        assert posted.status_code == 202, posted.text
        wait_until(lambda: len(smtp.messages) == 1)
        url = f"{api.base_url}/v1/events/{event['event_id']}"

        def delivered() -> dict[str, Any] | None:
            state: dict[str, Any] = httpx.get(url, headers=bearer(key_a)).json()
            return state if state["deliveries"][0]["status"] == "sent" else None

        state = wait_until(delivered)
        dossier = f"{api.base_url}/v1/dossiers/{event['dossier']['code']}/notifications"
        history = httpx.get(dossier, headers=bearer(key_a2))
        foreign_event = httpx.get(url, headers=bearer(key_b))
        foreign_dossier = httpx.get(dossier, headers=bearer(key_b))
        missing = httpx.get(f"{api.base_url}/v1/events/{uuid.uuid4()}", headers=bearer(key_b))
        missing_dossier = httpx.get(
            f"{api.base_url}/v1/dossiers/{AGENCY_B}-261203-9999/notifications",
            headers=bearer(key_b),
        )
        no_key = httpx.get(url)
        wrong_scope = httpx.get(url, headers=bearer(inbox_only))
    assert state["outcome"] == "accepted"
    assert (state["agency"], state["dossier_code"]) == (AGENCY_A, event["dossier"]["code"])
    assert state["dossier_status"] == "result_ready"
    assert state["duplicates"] == 0
    assert state["rejections"] == []
    [delivery] = state["deliveries"]
    assert (delivery["channel"], delivery["provider"], delivery["attempts"]) == (
        "email",
        "email",
        1,
    )
    assert delivery["recipient"] != "citizen.a@example.com"
    assert delivery["recipient"].endswith("@example.com")
    assert delivery["sent_at"] is not None
    assert delivery["fallback_of"] is None
    # Any key of the agency sees the dossier, with the same event in it.
    assert history.status_code == 200
    assert [e["event_id"] for e in history.json()["events"]] == [event["event_id"]]
    assert history.json()["events"][0]["deliveries"] == state["deliveries"]
    # Another agency's event and dossier look exactly like ones that do not exist.
    assert foreign_event.status_code == foreign_dossier.status_code == 404
    assert foreign_event.json() == missing.json()
    assert foreign_dossier.json() == missing_dossier.json()
    assert no_key.status_code == 401
    assert wrong_scope.status_code == 403


def test_a_publisher_sees_its_own_rejects_with_the_reason_and_no_one_elses(
    local_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    keys = ApiKeys(pg_database)
    key_a = keys.create("motcua-a", ["publish"], [AGENCY_A])
    key_a2 = keys.create("motcua-a-2", ["publish"], [AGENCY_A])
    key_b = keys.create("motcua-b", ["publish"], [AGENCY_B])
    invalid = event_of(0)
    invalid["occurred_at"] = "yesterday"
    # Valid, but rejected after the 202: SMS is off here and the only contact is a phone.
    no_contact = event_of(12)
    no_contact["applicant"]["contacts"] = {"phone": "0912345678"}
    assert no_contact["agency"]["code"] == AGENCY_A
    with RunningWorker(local_app), ServedApi(create_api(local_app)) as api:
        refused = httpx.post(f"{api.base_url}/v1/events", json=invalid, headers=bearer(key_a))
        assert refused.status_code == 422
        accepted = httpx.post(f"{api.base_url}/v1/events", json=no_contact, headers=bearer(key_a))
        assert accepted.status_code == 202

        def get(event: dict[str, Any], key: str) -> httpx.Response:
            return httpx.get(f"{api.base_url}/v1/events/{event['event_id']}", headers=bearer(key))

        wait_until(lambda: get(no_contact, key_a).status_code == 200)
        own_invalid, own_rejected = get(invalid, key_a), get(no_contact, key_a)
        agency_colleague = get(no_contact, key_a2)
        other_agency = [get(invalid, key_b), get(no_contact, key_b)]
        dossier = httpx.get(
            f"{api.base_url}/v1/dossiers/{no_contact['dossier']['code']}/notifications",
            headers=bearer(key_a),
        )
    assert own_invalid.status_code == 200
    body = own_invalid.json()
    assert body["outcome"] == "rejected"
    assert body["deliveries"] == []
    [rejection] = body["rejections"]
    assert "occurred_at" in rejection["reason"]
    assert rejection["source"] == "http"
    assert own_rejected.json()["rejections"][0]["reason"].startswith("no usable contact")
    # The reject belongs to agency A (its key may publish for A): A's other key sees it.
    assert agency_colleague.status_code == 200
    assert [r.status_code for r in other_agency] == [404, 404]
    assert dossier.status_code == 200
    assert dossier.json()["events"] == []
    assert [r["event_id"] for r in dossier.json()["rejections"]] == [no_contact["event_id"]]
    assert "0912345678" not in json.dumps([own_invalid.json(), own_rejected.json()])


def test_statuses_stay_queryable_after_the_purge_clears_the_contacts(
    local_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    key_a = ApiKeys(pg_database).create("motcua-a", ["publish"], [AGENCY_A])
    event = event_of(0)
    with RunningWorker(local_app), ServedApi(create_api(local_app)) as api:
        httpx.post(f"{api.base_url}/v1/events", json=event, headers=bearer(key_a))
        wait_until(lambda: len(smtp.messages) == 1)
        url = f"{api.base_url}/v1/events/{event['event_id']}"
        before = wait_until(
            lambda: (
                (s := httpx.get(url, headers=bearer(key_a)).json())["deliveries"][0]["status"]
                == "sent"
                and s
            )
        )
        retention = Retention(pg_database, local_app.settings)
        report = retention.purge(now=utcnow() + timedelta(days=400))
        after = httpx.get(url, headers=bearer(key_a))
    assert report.deliveries == 1
    assert report.events == 1
    assert after.status_code == 200
    assert after.json() == before
