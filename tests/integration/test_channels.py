"""SMS and Zalo end to end on the real RabbitMQ and PostgreSQL, against local servers that
speak the eSMS, SpeedSMS and Zalo ZNS APIs: request shapes, token refresh mid-run,
fallback, failover on an operator alert, and delivery receipts through the API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest
import sqlalchemy as sa

from notifier.amqp import declare_topology
from notifier.api import create_api
from notifier.app import Notifier
from notifier.publisher import EventPublisher
from notifier.samples import sample_event
from notifier.simulators.local import LocalProviders
from notifier.store import Database
from notifier.store.schema import deliveries, provider_health
from tests.support import RunningWorker, ServedApi, rabbit_settings, wait_until

pytestmark = pytest.mark.integration

PHONE = "+84 90 188 8484"  # written the way a citizen might


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as local:
        yield local


def make_app(
    amqp_url: str,
    pg_url: str,
    prefix: str,
    providers: LocalProviders,
    receipts_base: str | None = None,
) -> Notifier:
    overrides = providers.settings_overrides(receipts_base=receipts_base)
    app = Notifier(rabbit_settings(amqp_url, pg_url, prefix, **overrides))
    providers.seed_tokens(app.tokens)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    declare_topology(connection.channel(), app.settings.events)
    connection.close()
    return app


def event_for(status: str, **contacts: Any) -> dict[str, Any]:
    event = sample_event(7, event_id=uuid.uuid4())
    event["dossier"]["status"] = status
    event["applicant"]["language"] = "vi"
    event["applicant"]["contacts"] = contacts or {
        "phone": PHONE,
        "zalo": {"phone": PHONE},
        "email": "khai@example.vn",
    }
    return event


def publish(app: Notifier, *events: dict[str, Any]) -> None:
    with EventPublisher(app.settings.broker_url, app.settings.events) as publisher:
        assert publisher.publish_many(events).failed == []


def rows(database: Database) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as connection:
        found = connection.execute(sa.select(deliveries)).mappings().all()
    return {row["channel"]: dict(row) for row in found}


def test_sms_and_zalo_receive_the_right_requests(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    event = event_for("supplement_requested")
    with RunningWorker(app):
        publish(app, event)
        wait_until(lambda: providers.esms.messages and providers.zalo.messages)
        wait_until(
            lambda: (
                all(r["status"] == "sent" for r in rows(pg_database).values())
                and len(rows(pg_database)) == 3
            )
        )
    found = rows(pg_database)
    [sms] = providers.esms.messages
    assert sms.brandname == "CONG DVC"
    assert sms.phone == "0901888484"  # eSMS takes the national form
    assert sms.request_id == str(found["sms"]["delivery_id"])  # our idempotency reference
    assert not sms.is_unicode
    assert sms.content.isascii()
    assert event["dossier"]["code"] in sms.content
    assert "bo sung" in sms.content.lower()  # "bổ sung", unaccented
    assert found["sms"]["details"]["segments"] == 1

    [zns] = providers.zalo.messages
    assert zns.phone == "84901888484"
    assert zns.tracking_id == str(found["zalo"]["delivery_id"])
    assert event["dossier"]["code"] in json.dumps(zns.template_data, ensure_ascii=False)
    assert zns.template_data["customer_name"] == event["applicant"]["name"]
    assert found["zalo"]["details"]["quota_remaining"] is not None
    # The quota left is also kept per provider, for operators and metrics.
    with pg_database.engine.connect() as connection:
        health = connection.execute(
            sa.select(provider_health.c.details).where(provider_health.c.provider == "zalo")
        ).scalar_one()
    assert health["quota_remaining"] == found["zalo"]["details"]["quota_remaining"]


def test_zalo_token_expiring_mid_run_is_refreshed_once_and_nothing_is_lost(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    first_refresh_token = providers.zalo.current_refresh_token
    with RunningWorker(app, threads=8):
        publish(app, *[event_for("received") for _ in range(5)])
        wait_until(lambda: len(providers.zalo.messages) == 5)
        refreshes = providers.zalo.refresh_count
        providers.zalo.expire_access_token()
        publish(app, *[event_for("received") for _ in range(10)])
        wait_until(lambda: len(providers.zalo.messages) == 15)
    assert refreshes == 1  # the first access token
    assert providers.zalo.refresh_count == 2  # exactly one more, for 8 threads at once
    stored = app.tokens.get("zalo")
    assert stored is not None
    assert stored.refresh_token == providers.zalo.current_refresh_token
    assert stored.refresh_token != first_refresh_token


def test_not_a_zalo_user_falls_back_to_sms_once_with_the_link_kept(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    providers.zalo.not_zalo_user("84901888484")
    with RunningWorker(app):
        publish(app, event_for("received"))  # routed to portal, email and zalo, not sms
        wait_until(
            lambda: "sms" in rows(pg_database) and rows(pg_database)["sms"]["status"] == "sent"
        )
    found = rows(pg_database)
    assert found["zalo"]["status"] == "permanent-failure"
    assert found["sms"]["fallback_of"] == found["zalo"]["delivery_id"]
    assert len(providers.esms.messages) == 1
    assert providers.zalo.messages == []


def test_an_operator_alert_at_one_gateway_fails_over_to_the_next(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    providers.esms.fail_next(1, code=103)  # balance too low: our problem, not the citizen's
    with RunningWorker(app):
        publish(app, event_for("refused", phone=PHONE))
        wait_until(lambda: rows(pg_database).get("sms", {}).get("status") == "sent")
    assert rows(pg_database)["sms"]["provider"] == "speedsms"
    assert len(providers.speedsms.messages) == 1
    assert providers.esms.messages == []


def test_receipts_are_verified_and_replays_refused(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        receipts = f"{api.base_url}/v1/receipts"
        publish(app, event_for("result_ready"))
        wait_until(lambda: len(providers.esms.messages) == 1 and len(providers.zalo.messages) == 1)
        wait_until(lambda: rows(pg_database).get("zalo", {}).get("status") == "sent")
        wait_until(lambda: rows(pg_database).get("sms", {}).get("status") == "sent")
        sms = providers.esms.messages[0]
        zns = providers.zalo.messages[0]

        forged = providers.esms.send_report(sms, url=f"{receipts}/esms?token=wrong")
        assert forged.status_code == 403
        good = providers.esms.send_report(
            sms, url=f"{receipts}/esms?token={providers.receipt_token}"
        )
        assert good.status_code == 200, good.text
        replayed = providers.esms.send_report(
            sms, url=f"{receipts}/esms?token={providers.receipt_token}"
        )
        assert replayed.status_code == 409

        bad_signature = httpx.post(
            f"{receipts}/zalo",
            content=providers.zalo.build_receipt(zns.tracking_id or "")[0],
            headers={"X-ZEvent-Signature": "mac=" + "0" * 64},
        )
        assert bad_signature.status_code == 403
        body, headers = providers.zalo.build_receipt(zns.tracking_id or "")
        assert httpx.post(f"{receipts}/zalo", content=body, headers=headers).status_code == 200
        replay = httpx.post(f"{receipts}/zalo", content=body, headers=headers)
        assert replay.status_code == 409
    found = rows(pg_database)
    assert found["sms"]["status"] == "delivered"
    assert found["zalo"]["status"] == "delivered"
    assert found["email"]["status"] == "sent"  # no receipt for email
