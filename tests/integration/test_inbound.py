"""Citizens ask, notifier answers: SMS (eSMS's MO forward) and Zalo (the OA webhook's
user_send_text) end to end on the real RabbitMQ and PostgreSQL, through the API, the
workers and the local eSMS and Zalo servers. The reply is a delivery like any other."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

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
from notifier.store.schema import deliveries, inbound_messages
from notifier.web.api import create_api
from tests.support import RunningWorker, ServedApi, rabbit_settings, wait_until

pytestmark = pytest.mark.integration

APPLICANT = "0901888484"
APPLICANT_ZALO_USER = "4455667788990011"
STRANGER = "0912345678"
NO_SUCH_CODE = "000.00.99.X99-991231-9999"


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as local:
        yield local


def make_app(
    amqp_url: str, pg_url: str, prefix: str, providers: LocalProviders, **overrides: Any
) -> Notifier:
    app = Notifier(
        rabbit_settings(amqp_url, pg_url, prefix, **providers.settings_overrides(), **overrides)
    )
    providers.seed_tokens(app.tokens)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    declare_topology(connection.channel(), app.settings.events)
    connection.close()
    return app


def processing_event() -> dict[str, Any]:
    event = sample_event(3, event_id=uuid.uuid4())
    event["dossier"]["status"] = "processing"
    event["applicant"]["language"] = "vi"
    # "processing" goes to the portal only: no SMS or Zalo message was sent, so the
    # applicant's phone and Zalo id are known from the event alone.
    event["applicant"]["contacts"] = {
        "phone": APPLICANT,
        "zalo": {"user_id": APPLICANT_ZALO_USER},
        "portal_account_id": "acc-42",
    }
    return event


def recorded(database: Database) -> bool:
    """Whether the event's portal notification is done (so the event is recorded)."""
    with database.engine.connect() as connection:
        return bool(
            connection.execute(
                sa.select(sa.func.count()).where(
                    deliveries.c.channel == "portal", deliveries.c.status == "delivered"
                )
            ).scalar_one()
        )


def publish(app: Notifier, event: dict[str, Any]) -> None:
    with EventPublisher(app.settings.broker_url, app.settings.events) as publisher:
        assert publisher.publish_many([event]).failed == []


def sms_to(providers: LocalProviders, national: str) -> list[str]:
    return [m.content for m in providers.esms.messages if m.national_phone == national]


def replies(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        found = connection.execute(
            sa.select(deliveries).where(deliveries.c.event_status == "reply")
        ).mappings()
        return [dict(row) for row in found]


def inbound_rows(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        return [dict(r) for r in connection.execute(sa.select(inbound_messages)).mappings()]


def mo_url(api: ServedApi, providers: LocalProviders) -> str:
    return f"{api.base_url}/v1/inbound-sms/esms/{providers.receipt_token}"


def test_an_applicant_who_texts_tra_cuu_gets_the_status_and_a_stranger_the_unknown_answer(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    event = processing_event()
    code = event["dossier"]["code"]
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        publish(app, event)
        wait_until(lambda: recorded(pg_database))
        told = len(sms_to(providers, APPLICANT))

        asked = providers.esms.send_mo(mo_url(api, providers), APPLICANT, f"tra cuu {code}")
        assert asked.status_code == 200, asked.text
        assert (asked.json()["received"], asked.json()["answered"]) == (1, 1)
        answer = wait_until(lambda: sms_to(providers, APPLICANT)[told:])[0]
        # The status in words, the agency and the appointment date, unaccented GSM-7.
        assert code in answer
        assert "Dang xu ly" in answer
        assert event["agency"]["name"][:10].replace("Ủ", "U") in answer or "UBND" in answer
        due = datetime.fromisoformat(event["dossier"]["due_date"]).strftime("%d/%m/%Y")
        assert due in answer
        assert len(answer) <= 160  # one segment

        # Another number asks about the same dossier, and about one that does not exist:
        # word for word the same answer, and nothing of the dossier.
        providers.esms.send_mo(mo_url(api, providers), STRANGER, f"TRA CỨU {code}")
        [stranger] = wait_until(lambda: sms_to(providers, STRANGER))
        providers.esms.send_mo(mo_url(api, providers), STRANGER, f"tracuu {NO_SUCH_CODE}")
        first, second = wait_until(
            lambda: sms_to(providers, STRANGER) if len(sms_to(providers, STRANGER)) == 2 else None
        )
        assert first == second == stranger
        assert code not in stranger
        assert "xu ly" not in stranger.lower()
        wait_until(lambda: all(r["status"] == "sent" for r in replies(pg_database)))

    # The replies are deliveries (logged, attempted, counted); the messages are stored
    # masked, with what they asked and what came of them.
    found = replies(pg_database)
    assert len(found) == 3
    assert {r["channel"] for r in found} == {"sms"}
    assert all(r["attempts"] == 1 and r["provider"] == "esms" for r in found)
    stored = inbound_rows(pg_database)
    assert {r["command"] for r in stored} == {"status"}
    assert all(APPLICANT[1:] not in r["sender_masked"] for r in stored)
    owned = [r for r in stored if r["dossier_code"] == code]
    assert len(owned) == 1  # only the applicant's was answered with the dossier


def test_a_citizen_who_writes_to_the_zalo_oa_gets_a_consultation_reply(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    event = processing_event()
    code = event["dossier"]["code"]
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        publish(app, event)
        wait_until(lambda: recorded(pg_database))
        webhook = f"{api.base_url}/v1/receipts/zalo"
        asked = providers.zalo.send_user_text(webhook, APPLICANT_ZALO_USER, f"Tra cứu {code}")
        assert asked.status_code == 200, asked.text
        assert asked.json()["inbound"] == 1
        [reply] = providers.zalo.wait_for_consultations(1, timeout=20)
        assert reply.user_id == APPLICANT_ZALO_USER
        assert code in reply.text
        assert "Đang xử lý" in reply.text

        # Another Zalo user asks about it: the unknown answer, by consultation too.
        providers.zalo.send_user_text(webhook, "9988776655", f"TRA CUU {code}")
        _, other = providers.zalo.wait_for_consultations(2, timeout=20)
        assert other.user_id == "9988776655"
        assert code not in other.text
        assert "Không tìm thấy" in other.text

        providers.zalo.send_user_text(webhook, "9988776655", "HD")
        *_, helped = providers.zalo.wait_for_consultations(3, timeout=20)
        assert "TRA CUU" in helped.text
        wait_until(lambda: all(r["status"] == "sent" for r in replies(pg_database)))
    assert {r["channel"] for r in replies(pg_database)} == {"zalo"}
    assert {r["provider"] for r in replies(pg_database)} == {"zalo"}


def test_forged_unsigned_stale_and_replayed_inbound_calls_are_refused(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_app(amqp_url, pg_url, queue_prefix, providers)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        url = mo_url(api, providers)
        esms = providers.esms
        refused = [
            esms.send_mo(url, STRANGER, "HD", private_key="not-the-key"),  # forged
            esms.send_mo(url, STRANGER, "HD", signed=False),  # unsigned
            esms.send_mo(  # outside the time window
                url, STRANGER, "HD", receive_time=datetime.now(UTC) - timedelta(hours=2)
            ),
            esms.send_mo(f"{api.base_url}/v1/inbound-sms/esms/{'x' * 24}", STRANGER, "HD"),
            esms.send_mo(f"{api.base_url}/v1/inbound-sms/esms", STRANGER, "HD"),
        ]
        assert [r.status_code for r in refused] == [403] * 5

        # A genuine call, then the same call again (a replay): answered once.
        params = esms.mo_params(STRANGER, "HD")
        first = httpx.get(url, params=params)
        again = httpx.get(url, params=params)
        assert (first.status_code, first.json()["answered"]) == (200, 1)
        assert (again.status_code, again.json()["answered"], again.json()["duplicates"]) == (
            200,
            0,
            1,
        )

        # Control characters (a NUL cannot be stored in PostgreSQL text) are dropped,
        # not a server error.
        odd = httpx.get(url, params=esms.mo_params(STRANGER, "H\x00D", smsid="mo\x00-1"))
        assert (odd.status_code, odd.json()["answered"]) == (200, 1)

        webhook = f"{api.base_url}/v1/receipts/zalo"
        zalo = providers.zalo
        for options in ({"secret": "forged-secret"}, {"signed": False}):
            body, headers = zalo.build_user_text("9988776655", "HD", **options)
            assert httpx.post(webhook, content=body, headers=headers).status_code == 403
        body, headers = zalo.build_user_text("9988776655", "HD")
        assert httpx.post(webhook, content=body, headers=headers).json()["inbound"] == 1
        replayed = httpx.post(webhook, content=body, headers=headers)
        assert (replayed.status_code, replayed.json()["duplicates"]) == (200, 1)
        zalo.wait_for_consultations(1, timeout=20)
        wait_until(lambda: len(replies(pg_database)) == 3)
        wait_until(lambda: all(r["status"] == "sent" for r in replies(pg_database)))
    assert len(sms_to(providers, STRANGER)) == 2
    assert len(providers.zalo.consultations) == 1
    assert len(inbound_rows(pg_database)) == 3


def test_a_thousand_messages_from_one_number_get_a_bounded_number_of_answers(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    # The API's own per-caller limit (50/s) would turn most of the flood away with 429
    # before it reached the dispatcher: raised here so the per-sender limit is tested.
    app = make_app(
        amqp_url,
        pg_url,
        queue_prefix,
        providers,
        api={"rate_per_s": 10_000, "burst": 10_000},
        inbound={"max_replies": 5},
    )
    event = processing_event()
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        url = mo_url(api, providers)
        texts = [f"tra cuu {event['dossier']['code']}", "HD", "???", "STOP", "DANG KY"]

        def one(index: int) -> int:
            with httpx.Client(timeout=30) as client:
                params = providers.esms.mo_params(STRANGER, texts[index % len(texts)])
                return client.get(url, params=params).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(one, range(1000)))
        assert statuses == [200] * 1000
        # Five answers and one "too many messages", whatever the order they came in.
        wait_until(lambda: len(sms_to(providers, STRANGER)) == 6, timeout=60)
        wait_until(lambda: all(r["status"] == "sent" for r in replies(pg_database)))
        # Still answering others: nothing crashed.
        providers.esms.send_mo(url, APPLICANT, "HD")
        wait_until(lambda: sms_to(providers, APPLICANT))
    stored = inbound_rows(pg_database)
    assert len(stored) == 1001
    by_sender: dict[str, list[str]] = {}
    for row in stored:
        by_sender.setdefault(row["sender_hash"], []).append(row["outcome"])
    flood = max(by_sender.values(), key=len)
    assert len(flood) == 1000
    counted = {outcome: flood.count(outcome) for outcome in set(flood)}
    assert counted == {"answered": 5, "rate-limited": 1, "silenced": 994}
    sent = sms_to(providers, STRANGER)
    assert len(sent) == 6
    assert sum("nhieu tin" in text.lower() for text in sent) == 1
