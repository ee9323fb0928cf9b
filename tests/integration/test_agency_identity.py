"""Agency identity end to end (issue 14, section 2): who submitted a reject, replay under
the original submission's authorisation, dossier codes bound to their agency, the
registry of agencies, and broker publishers bound to their agencies by RabbitMQ's
validated ``user_id``. On the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from notifier.api import create_api
from notifier.apikeys import ApiKeys
from notifier.app import Notifier
from notifier.events import Status
from notifier.samples import sample_event
from notifier.simulators.smtp import SmtpCatcher
from notifier.store import Database
from notifier.store.schema import deliveries, events, rejected_events
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


def agency_b_event() -> dict[str, Any]:
    event = sample_event(1, status=Status.RESULT_READY, event_id=uuid.uuid4())
    event["applicant"]["contacts"] = {"email": "citizen.b@example.com"}
    assert event["agency"]["code"] == AGENCY_B
    return event


def with_invalid_byte(event: dict[str, Any]) -> bytes:
    """The event as UTF-8 with one 0xFF byte inside the applicant's name."""
    body = json.dumps(event, ensure_ascii=False).encode()
    name = event["applicant"]["name"].encode()
    return body.replace(name, name[:3] + b"\xff" + name[3:], 1)


def settle(seconds: float = 1.0) -> None:
    """Give a wrongly submitted event the time to be ingested and sent."""
    time.sleep(seconds)


def deliveries_of(database: Database, event_id: str) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        return [
            dict(row)
            for row in connection.execute(
                sa.select(deliveries).where(deliveries.c.event_id == uuid.UUID(event_id))
            ).mappings()
        ]


def rejects_of(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        return [
            dict(row)
            for row in connection.execute(
                sa.select(rejected_events).order_by(rejected_events.c.received_at)
            ).mappings()
        ]


# -- 1. a reject keeps who sent it and what was received; replay re-authorises ----------


def test_replay_all_does_not_deliver_an_other_agencys_event_sent_with_an_invalid_byte(
    local_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    keys = ApiKeys(pg_database)
    publisher_a = keys.create("motcua-a", ["publish"], [AGENCY_A])
    admin = keys.create("ops-admin", ["admin"], [])
    event = agency_b_event()
    body = with_invalid_byte(event)
    with RunningWorker(local_app), ServedApi(create_api(local_app)) as api:
        posted = httpx.post(
            f"{api.base_url}/v1/events",
            content=body,
            headers={**bearer(publisher_a), "Content-Type": "application/json"},
        )
        assert posted.status_code == 422, posted.text
        replayed = httpx.post(
            f"{api.base_url}/v1/rejects/replay", json={"all": True}, headers=bearer(admin)
        )
        assert replayed.status_code == 200, replayed.text
        settle()
    # Agency B's event was not delivered, nor even recorded as an event.
    assert smtp.messages == []
    assert deliveries_of(pg_database, event["event_id"]) == []
    with pg_database.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 0
    # The reject keeps the bytes received and who sent them; it is still a reject.
    [reject] = rejects_of(pg_database)
    assert reject["payload_raw"] == body
    assert reject["submitter_kind"] == "api-key"
    assert reject["submitter_name"] == "motcua-a"
    assert reject["submitter_agencies"] == [AGENCY_A]
    assert reject["replayed_at"] is None
    # Replayed as received, it is still not UTF-8: refused, with the reason.
    [result] = replayed.json()["items"]
    assert result["outcome"] == "still-invalid"
    assert "utf-8" in result["detail"]
