"""SMS and Zalo end to end on the real RabbitMQ and PostgreSQL, against local servers that
speak the eSMS, SpeedSMS and Zalo ZNS APIs: request shapes, token refresh mid-run,
fallback, failover on an operator alert, and delivery receipts through the API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pika
import pytest
import sqlalchemy as sa
from notifier_simulators.local import LocalProviders

from notifier.amqp import declare_topology
from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.publisher import EventPublisher
from notifier.store import Database
from notifier.store.optouts import OptOutStore
from notifier.store.schema import deliveries, delivery_attempts, provider_health
from notifier.web.api import create_api
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


DUPLICATE = {"received": 1, "applied": 0, "duplicates": 1, "inbound": 0, "opted_out": 0}
# Where the app tells eSMS to call back; the tests point it at the served API.
PUBLIC_BASE = "https://notifier.example.vn"


def served(url: str, api: ServedApi) -> str:
    """A callback URL we gave a provider, aimed at the test's API server."""
    assert url.startswith(PUBLIC_BASE)
    return api.base_url + url[len(PUBLIC_BASE) :]


def receipt_rows(database: Database) -> int:
    with database.engine.connect() as connection:
        return len(
            connection.execute(
                sa.select(delivery_attempts.c.delivery_id).where(
                    delivery_attempts.c.outcome.like("receipt:%")
                )
            ).all()
        )


def test_receipts_are_verified_applied_once_and_duplicates_acknowledged(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers, receipts_base=PUBLIC_BASE)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        receipts = f"{api.base_url}/v1/receipts"
        publish(app, event_for("result_ready"))
        wait_until(lambda: len(providers.esms.messages) == 1 and len(providers.zalo.messages) == 1)
        wait_until(lambda: rows(pg_database).get("zalo", {}).get("status") == "sent")
        wait_until(lambda: rows(pg_database).get("sms", {}).get("status") == "sent")
        sms = providers.esms.messages[0]
        zns = providers.zalo.messages[0]
        callback = served(sms.callback_url or "", api)

        forged = providers.esms.send_report(sms, url=f"{receipts}/esms/wrong-token-0123456789")
        assert forged.status_code == 403
        good = providers.esms.send_report(sms, url=callback)
        assert good.status_code == 200, good.text
        assert good.json()["applied"] == 1
        # eSMS retries a report when our answer was lost: 200, not applied again.
        replayed = providers.esms.send_report(sms, url=callback)
        assert (replayed.status_code, replayed.json()) == (200, DUPLICATE)

        bad_signature = httpx.post(
            f"{receipts}/zalo",
            content=providers.zalo.build_receipt(zns.tracking_id or "")[0],
            headers={"X-ZEvent-Signature": "mac=" + "0" * 64},
        )
        assert bad_signature.status_code == 403
        body, headers = providers.zalo.build_receipt(zns.tracking_id or "")
        taken = httpx.post(f"{receipts}/zalo", content=body, headers=headers)
        assert (taken.status_code, taken.json()["applied"]) == (200, 1)
        replay = httpx.post(f"{receipts}/zalo", content=body, headers=headers)
        assert (replay.status_code, replay.json()) == (200, DUPLICATE)
    found = rows(pg_database)
    assert found["sms"]["status"] == "delivered"
    assert found["zalo"]["status"] == "delivered"
    assert found["email"]["status"] == "sent"  # no receipt for email
    assert receipt_rows(pg_database) == 2


def test_a_receipt_naming_another_providers_delivery_is_not_applied(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers, receipts_base=PUBLIC_BASE)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        publish(app, event_for("result_ready"))  # email, zalo and sms
        wait_until(
            lambda: (
                len(rows(pg_database)) == 3
                and all(r["status"] == "sent" for r in rows(pg_database).values())
            )
        )
        found = rows(pg_database)
        [sms] = providers.esms.messages
        callback = served(sms.callback_url or "", api)
        # eSMS's callback (right token) naming the email and the Zalo delivery, as the
        # red-team pass did: a failure for the email, delivered for the Zalo message.
        for channel, report in (("email", {"failed": 1}), ("zalo", {})):
            other = providers.esms.report_params(sms, **report)
            other["RequestId"] = str(found[channel]["delivery_id"])
            other.pop("SMSID")
            answer = httpx.get(callback + "?" + urlencode(other))
            assert answer.status_code == 200, answer.text
            assert answer.json()["applied"] == 0, channel
        # A correctly signed Zalo webhook naming the email delivery.
        body, headers = providers.zalo.build_receipt(str(found["email"]["delivery_id"]))
        answer = httpx.post(f"{api.base_url}/v1/receipts/zalo", content=body, headers=headers)
        assert (answer.status_code, answer.json()["applied"]) == (200, 0)
        # eSMS naming its own delivery with another message's SMSID.
        mismatched = {**providers.esms.report_params(sms), "SMSID": "not-this-message"}
        answer = httpx.get(callback + "?" + urlencode(mismatched))
        assert answer.json()["applied"] == 0
        assert {c: r["status"] for c, r in rows(pg_database).items()} == {
            "email": "sent",
            "zalo": "sent",
            "sms": "sent",
        }
        assert receipt_rows(pg_database) == 0
        # Its own report of its own delivery is applied.
        assert providers.esms.send_report(sms, url=callback).json()["applied"] == 1
    assert rows(pg_database)["sms"]["status"] == "delivered"


def test_an_esms_report_with_a_repeated_parameter_or_other_counts_is_not_applied_again(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers, receipts_base=PUBLIC_BASE)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        publish(app, event_for("refused", phone=PHONE))  # sms only
        wait_until(lambda: rows(pg_database).get("sms", {}).get("status") == "sent")
        [sms] = providers.esms.messages
        callback = served(sms.callback_url or "", api)
        query = urlencode(providers.esms.report_params(sms))  # delivered
        first = httpx.get(f"{callback}?{query}")
        assert (first.status_code, first.json()["applied"]) == (200, 1)
        # The same report with a second SMSID: which one is it about? Refused.
        repeated = httpx.get(f"{callback}?{query}&SMSID=replay1")
        assert repeated.status_code == 400
        # The same report with other counts, and a parameter we do not read: the same
        # message in the same state, a duplicate.
        recounted = query.replace("SendSuccess=1", "SendSuccess=2") + "&x=1"
        assert recounted != query
        again = httpx.get(f"{callback}?{recounted}")
        assert again.status_code == 200
        assert again.json()["duplicates"] == 1
        assert again.json()["applied"] == 0
    assert rows(pg_database)["sms"]["status"] == "delivered"
    assert receipt_rows(pg_database) == 1


def test_an_esms_callback_built_as_its_docs_show_reaches_us_with_the_token_in_the_path(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers, receipts_base=PUBLIC_BASE)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        publish(app, event_for("refused", phone=PHONE))
        wait_until(lambda: rows(pg_database).get("sms", {}).get("status") == "sent")
        [sms] = providers.esms.messages
        # What we gave eSMS: our URL with the token as its last path segment.
        assert sms.callback_url == f"{PUBLIC_BASE}/v1/receipts/esms/{providers.receipt_token}"
        # eSMS's docs (esms-api/callback-url.md) show the report appended to the URL:
        #   https://{{yourportalreceivecallback}}?SMSID=...&SendFailed=...&SendStatus=5...
        docs_query = (
            f"SMSID={sms.provider_id}&SendFailed=0&SendStatus=5&SendSuccess=1"
            f"&TotalPrice=750.0000&TotalReceiver=1&TotalSent=1&RequestId={sms.request_id}"
            "&TypeId=2&telcoid=2&phonenumber=0901888484&switchsmsid="
        )
        legacy = f"{api.base_url}/v1/receipts/esms?token={providers.receipt_token}"
        # A ?token= of ours would not survive that: the token swallows "?SMSID=...".
        assert httpx.get(f"{legacy}?{docs_query}").status_code == 403
        answer = httpx.get(f"{served(sms.callback_url, api)}?{docs_query}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["applied"] == 1
    assert rows(pg_database)["sms"]["status"] == "delivered"


def test_the_deprecated_query_token_still_works_for_a_transition(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        publish(app, event_for("refused", phone=PHONE))
        wait_until(lambda: rows(pg_database).get("sms", {}).get("status") == "sent")
        [sms] = providers.esms.messages
        legacy = f"{api.base_url}/v1/receipts/esms?token={providers.receipt_token}"
        answer = providers.esms.send_report(sms, url=legacy)  # "&SMSID=..." appended
        assert (answer.status_code, answer.json()["applied"]) == (200, 1)
    assert rows(pg_database)["sms"]["status"] == "delivered"


def test_speedsms_delivery_reports_and_stop_replies_arrive_by_its_callbacks(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    providers.esms.fail_next(1, code=103)  # eSMS out of balance: SpeedSMS sends
    store = OptOutStore(pg_database, app.settings.recipient_hash_key.get_secret_value())
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        # The URL an operator sets in SpeedSMS's dashboard.
        providers.speedsms.callback_url = (
            f"{api.base_url}/v1/receipts/speedsms/{providers.receipt_token}"
        )
        publish(app, event_for("refused", phone=PHONE))
        wait_until(lambda: rows(pg_database).get("sms", {}).get("status") == "sent")
        assert rows(pg_database)["sms"]["provider"] == "speedsms"
        [sms] = providers.speedsms.messages
        trying = providers.speedsms.send_report(sms, status=3)
        assert (trying.status_code, trying.json()["received"]) == (200, 0)
        delivered = providers.speedsms.send_report(sms)
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["applied"] == 1
        assert providers.speedsms.send_report(sms).json() == DUPLICATE
        wrong = providers.speedsms.send_report(
            sms, url=f"{api.base_url}/v1/receipts/speedsms/not-the-token-0123456789"
        )
        assert wrong.status_code == 403
        # The citizen answers "STOP": SpeedSMS forwards it to the same URL.
        assert not store.is_opted_out(PHONE, "sms")
        chat = providers.speedsms.send_incoming("84901888484", "Cam on")
        assert chat.json()["opted_out"] == 0
        stop = providers.speedsms.send_incoming("84901888484", "STOP")
        assert stop.status_code == 200, stop.text
        assert (stop.json()["inbound"], stop.json()["opted_out"]) == (1, 1)
        assert store.is_opted_out(PHONE, "sms")
        # The same kind of call on the inbound-SMS URL, token in the path; and eSMS's
        # reply forwarding with the token in the path too.
        token = providers.receipt_token
        by_inbound_url = providers.speedsms.send_incoming(
            "0912345678", "Huy", url=f"{api.base_url}/v1/inbound-sms/speedsms/{token}"
        )
        assert by_inbound_url.json() == {"opted_out": True}
        assert store.is_opted_out("0912345678", "sms")
        esms_reply = httpx.get(
            f"{api.base_url}/v1/inbound-sms/esms/{token}",
            params={"Phone": "0987000111", "Content": "TU CHOI"},
        )
        assert esms_reply.json() == {"opted_out": True}
        assert store.is_opted_out("0987000111", "sms")
    assert rows(pg_database)["sms"]["status"] == "delivered"
