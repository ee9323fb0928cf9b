"""Agency identity end to end (issue 14, section 2): who submitted a reject, replay under
the original submission's authorisation, dossier codes bound to their agency, the
registry of agencies, and broker publishers bound to their agencies by RabbitMQ's
validated ``user_id``. On the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from notifier_simulators.smtp import SmtpCatcher
from pika.exceptions import ChannelClosedByBroker

from notifier.amqp import declare_topology
from notifier.app import Notifier
from notifier.cli.main import main
from notifier.events import Status
from notifier.ops.replay import Replayer, ReplayOutcome
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.operators import OperatorStore
from notifier.store.publishers import SUBMITTER_HEADER
from notifier.store.schema import deliveries, events, rejected_events, utcnow
from notifier.web.api import create_api
from tests.integration.test_console import PASSWORD, signed_in
from tests.support import (
    RunningWorker,
    ServedApi,
    make_settings,
    notifier_env,
    rabbit_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

AGENCY_A, AGENCY_B = "000.00.12.H29", "000.00.20.H56"  # sample_event(0) and sample_event(1)
HASH_KEY = "notifier-development-only"


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
        # The console shows who sent it and why it was not replayed.
        OperatorStore(pg_database).add("lan.admin", PASSWORD, "admin")
        page = signed_in(api.base_url, "lan.admin").get("/console/rejects").text
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
    assert reject["replay_refusal"] == f"still-invalid: {result['detail']}"
    assert "api-key:motcua-a" in page
    assert "Không gửi lại: still-invalid: body is not valid JSON" in page


def insert_reject(database: Database, **values: Any) -> uuid.UUID:
    reject_id = uuid.uuid4()
    payload = values.get("payload")
    row = {
        "reject_id": reject_id,
        "received_at": utcnow(),
        "source": "http",
        "reason": "as received",
        "payload_bytes": len(payload.encode()) if payload else 0,
        **values,
    }
    with database.begin() as connection:
        connection.execute(rejected_events.insert().values(**row))
    return reject_id


def test_a_reject_is_refused_at_replay_when_its_key_may_not_publish_for_its_agency(
    pg_url: str, pg_database: Database, smtp: SmtpCatcher
) -> None:
    """Over the size limit at first (so rejected before the agency check), then the
    operator raises the limit: the replay is authorised as the submission would be."""
    keys = ApiKeys(pg_database)
    publisher_a = keys.create("motcua-a", ["publish"], [AGENCY_A])
    publisher_b = keys.create("motcua-b", ["publish"], [AGENCY_B])
    foreign, own = agency_b_event(), agency_b_event()
    for event in (foreign, own):
        event["dossier"]["note"] = "Ghi chú dài. " * 100  # about 1.4 KB
    small = Notifier(
        make_settings(
            database_url=pg_url,
            adapters={"email": {"host": "127.0.0.1", "port": smtp.port}},
            events={"max_bytes": 1024},
        )
    )
    with ServedApi(create_api(small)) as api:
        for event, key in ((foreign, publisher_a), (own, publisher_b)):
            answer = httpx.post(f"{api.base_url}/v1/events", json=event, headers=bearer(key))
            assert answer.status_code == 422
            assert "over the 1024-byte limit" in answer.json()["detail"]["reason"]
    small.close()
    app = Notifier(
        make_settings(
            database_url=pg_url, adapters={"email": {"host": "127.0.0.1", "port": smtp.port}}
        )
    )
    with RunningWorker(app):
        # What "replay all" does from the console, the API and the CLI alike.
        results = Replayer(app).rejects(actor="t")
        wait_until(lambda: len(smtp.messages) == 1)
        settle()
    outcomes = {r.outcome: r for r in results}
    assert set(outcomes) == {ReplayOutcome.REPLAYED, ReplayOutcome.REFUSED}
    assert outcomes[ReplayOutcome.REFUSED].detail == (
        f"API key 'motcua-a' may not publish for agency '{AGENCY_B}' (its agencies: {AGENCY_A})"
    )
    assert deliveries_of(pg_database, foreign["event_id"]) == []
    assert [d["status"] for d in deliveries_of(pg_database, own["event_id"])] == ["sent"]
    assert len(smtp.messages) == 1
    # The refused one stays a reject, ready to replay if the key is given the agency.
    kept = {r["submitter_name"]: r["replayed_at"] for r in rejects_of(pg_database)}
    assert kept["motcua-a"] is None
    assert kept["motcua-b"] is not None


def test_a_revoked_keys_reject_is_not_replayed(local_app: Notifier, pg_database: Database) -> None:
    keys = ApiKeys(pg_database)
    keys.create("motcua-b", ["publish"], [AGENCY_B])
    [client] = keys.list()
    body = json.dumps(agency_b_event(), ensure_ascii=False).encode()
    reject = insert_reject(
        pg_database,
        payload=body.decode(),
        payload_raw=body,
        submitter_kind="api-key",
        submitter_name="motcua-b",
        submitter_id=str(client.client_id),
        submitter_agencies=[AGENCY_B],
    )
    submitted: list[bytes] = []
    replayer = Replayer(local_app, submit=lambda raw, _who: submitted.append(raw))
    keys.revoke("motcua-b")
    result = replayer.reject(reject, actor="t")
    assert (result.outcome, result.detail) == (
        ReplayOutcome.REFUSED,
        "API key 'motcua-b' is revoked or unknown",
    )
    assert submitted == []


def test_an_old_reject_kept_only_as_altered_text_or_without_its_submitter_is_not_replayed(
    local_app: Notifier, pg_database: Database
) -> None:
    """Rejects stored before raw bytes and submitters were kept."""
    event = json.dumps(agency_b_event(), ensure_ascii=False)
    name = json.loads(event)["applicant"]["name"]
    altered = insert_reject(
        pg_database, payload=event.replace(name, name[:2] + "\ufffd" + name[2:])
    )
    from_http = insert_reject(pg_database, payload=event)
    from_amqp = insert_reject(pg_database, payload=event, source="amqp")
    submitted: list[bytes] = []
    replayer = Replayer(local_app, submit=lambda raw, _who: submitted.append(raw))
    outcomes = {
        reject: replayer.reject(reject, actor="t") for reject in (altered, from_http, from_amqp)
    }
    assert outcomes[altered].outcome is ReplayOutcome.NOT_FAITHFUL
    assert outcomes[from_http].outcome is ReplayOutcome.REFUSED
    assert "was not recorded" in (outcomes[from_http].detail or "")
    # An old AMQP reject's publisher is unknown: refused while identity is strict.
    assert outcomes[from_amqp].outcome is ReplayOutcome.REFUSED
    assert "no user_id" in (outcomes[from_amqp].detail or "")
    assert submitted == []
    assert all(r["replayed_at"] is None for r in rejects_of(pg_database))


# -- 2. a dossier code belongs to its agency; names come from the registry ----------------


def test_a_key_cannot_write_into_another_agencys_dossier_under_its_own_agency_code(
    local_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    keys = ApiKeys(pg_database)
    publisher_a = keys.create("motcua-a", ["publish"], [AGENCY_A])
    publisher_b = keys.create("motcua-b", ["publish"], [AGENCY_B])
    genuine = agency_b_event()
    forged = agency_b_event()
    forged["agency"] = {"code": AGENCY_A, "name": "UBND B"}
    forged["dossier"]["status"] = "payment_required"
    forged["dossier"]["amount_due"] = 5_000_000
    forged["dossier"]["tracking_url"] = "https://pay.example.net/b"
    assert forged["dossier"]["code"] == genuine["dossier"]["code"]
    dossier = genuine["dossier"]["code"]
    with RunningWorker(local_app), ServedApi(create_api(local_app)) as api:
        url = f"{api.base_url}/v1/events"
        assert httpx.post(url, json=genuine, headers=bearer(publisher_b)).status_code == 202
        wait_until(lambda: len(smtp.messages) == 1)
        refused = httpx.post(url, json=forged, headers=bearer(publisher_a))
        assert refused.status_code == 422
        assert refused.json()["detail"]["reason"] == (
            f"dossier code {dossier!r} does not belong to agency {AGENCY_A!r}: a dossier "
            f"code is <agency code>-<YYMMDD>-<NNNN>, e.g. {AGENCY_A}-261126-0001"
        )
        settle()
    # B's dossier shows B's event only, and B's citizen got one message.
    timeline = DeliveryLog(pg_database, HASH_KEY).dossier(dossier)
    assert [e.event_id for e in timeline.events] == [uuid.UUID(genuine["event_id"])]
    assert {d.delivery.event_id for d in timeline.deliveries} == {uuid.UUID(genuine["event_id"])}
    assert len(smtp.messages) == 1
    assert deliveries_of(pg_database, forged["event_id"]) == []


AGENCIES_TOML = f"""
[agencies."{AGENCY_A}"]
name = "UBND phường Điện Biên, quận Ba Đình"
name_en = "Dien Bien Ward People's Committee"

[agencies."{AGENCY_B}"]
name = "Sở Tư pháp tỉnh Khánh Hòa"
"""


def test_with_a_registry_the_agency_name_comes_from_it_and_unknown_agencies_are_rejected(
    pg_url: str, pg_database: Database, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    registry = tmp_path / "agencies.toml"
    registry.write_text(AGENCIES_TOML, encoding="utf-8")
    app = Notifier(
        make_settings(
            database_url=pg_url,
            agencies_file=registry,
            adapters={"email": {"host": "127.0.0.1", "port": smtp.port}},
        )
    )
    publisher = ApiKeys(pg_database).create("motcua", ["publish"], [])
    claimed = sample_event(0, status=Status.RESULT_READY, event_id=uuid.uuid4())
    claimed["agency"]["name"] = "UBND B"  # the event's own claim: ignored
    claimed["applicant"].update(language="vi", contacts={"email": "citizen.a@example.com"})
    unknown = sample_event(2, status=Status.RESULT_READY, event_id=uuid.uuid4())  # H26
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        url = f"{api.base_url}/v1/events"
        assert httpx.post(url, json=claimed, headers=bearer(publisher)).status_code == 202
        refused = httpx.post(url, json=unknown, headers=bearer(publisher))
        wait_until(lambda: len(smtp.messages) == 1)
    assert refused.status_code == 422
    assert refused.json()["detail"]["reason"] == (
        f"agency '000.01.31.H26' is not in the registry of agencies ({registry})"
    )
    [message] = smtp.messages
    text = message_text(message)
    assert "UBND phường Điện Biên, quận Ba Đình" in text
    assert "UBND B" not in text
    [reject] = rejects_of(pg_database)
    assert reject["event_id"] == unknown["event_id"]
    assert reject["submitter_name"] == "motcua"


def message_text(message: Any) -> str:
    """The subject and every text part of a caught email, decoded."""
    parts = [str(message["Subject"])]
    parts += [p.get_content() for p in message.walk() if p.get_content_maintype() == "text"]
    return "\n".join(parts)


# -- 3. AMQP: publishers bound to their agencies by RabbitMQ's validated user_id ----------


def publish_as(
    url: str, events: Any, body: bytes, user_id: str | None, headers: dict[str, Any] | None = None
) -> tuple[int, str]:
    """Publish with confirms as the URL's user; the broker's reply (200: confirmed)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            events.exchange,
            events.routing_key,
            body,
            pika.BasicProperties(content_type="application/json", delivery_mode=2, user_id=user_id),
            mandatory=True,
        )
        return 200, "confirmed"
    except ChannelClosedByBroker as exc:
        return int(exc.reply_code), str(exc.reply_text)
    finally:
        if connection.is_open:
            connection.close()


def test_a_broker_publisher_may_publish_only_for_its_agencies_and_cannot_forge_user_id(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    smtp: SmtpCatcher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = rabbit_settings(
        amqp_url, pg_url, queue_prefix, adapters={"email": {"host": "127.0.0.1", "port": smtp.port}}
    )
    events_settings = settings.events
    admin = pika.BlockingConnection(pika.URLParameters(amqp_url))
    declare_topology(admin.channel(), events_settings)
    admin.close()
    name, password = f"pub-a-{queue_prefix}", secrets.token_urlsafe(18)
    env = notifier_env(settings)
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["broker", "add-publisher", name, "--agency", AGENCY_A],
        input=password + "\n",
        env=env,
    )
    assert created.exit_code == 0, created.output
    listed = runner.invoke(main, ["broker", "publishers", "--json"], env=env)
    assert json.loads(listed.output) == {"name": name, "agencies": [AGENCY_A]}
    as_publisher = f"amqp://{name}:{password}@{amqp_url.split('@', 1)[1]}"
    own = sample_event(0, status=Status.RESULT_READY, event_id=uuid.uuid4())
    own["applicant"]["contacts"] = {"email": "citizen.a@example.com"}
    foreign, anonymous, forged = agency_b_event(), agency_b_event(), agency_b_event()
    # Only notifier's own user may name another submitter: from a publisher, ignored.
    forged_header = {
        SUBMITTER_HEADER: json.dumps({"kind": "service", "name": "api", "agencies": ["*"]})
    }

    def body(event: dict[str, Any]) -> bytes:
        return json.dumps(event, ensure_ascii=False).encode()

    app = Notifier(settings)
    try:
        with RunningWorker(app):
            assert publish_as(as_publisher, events_settings, body(own), name)[0] == 200
            assert (
                publish_as(as_publisher, events_settings, body(foreign), name, forged_header)[0]
                == 200
            )
            assert publish_as(as_publisher, events_settings, body(anonymous), None)[0] == 200
            # The broker itself refuses a user_id that is not the connection's user.
            assert publish_as(as_publisher, events_settings, body(forged), "guest") == (
                406,
                f"PRECONDITION_FAILED - user_id property set to 'guest' but authenticated "
                f"user was '{name}'",
            )
            wait_until(lambda: len(rejects_of(pg_database)) == 2 and len(smtp.messages) == 1)
            settle()
        # A replay of the foreign event is refused as its publication was.
        replayer = Replayer(Notifier(settings), submit=lambda *_: None)
        replays = replayer.rejects(actor="t")
        replayer.app.close()
    finally:
        runner.invoke(main, ["broker", "remove-publisher", name], env=env)
    assert [m["To"] for m in smtp.messages] == ["citizen.a@example.com"]
    rejects = {r["event_id"]: r for r in rejects_of(pg_database)}
    assert set(rejects) == {foreign["event_id"], anonymous["event_id"]}
    wrong_agency = rejects[foreign["event_id"]]
    assert wrong_agency["reason"] == (
        f"broker user {name!r} may not publish for agency {AGENCY_B!r} (its agencies: {AGENCY_A})"
    )
    assert (wrong_agency["submitter_kind"], wrong_agency["submitter_name"]) == (
        "broker-user",
        name,
    )
    assert wrong_agency["payload_raw"] == body(foreign)
    no_user = rejects[anonymous["event_id"]]
    assert no_user["submitter_kind"] == "unidentified"
    assert no_user["reason"].startswith("the message has no user_id property")
    for event in (foreign, anonymous, forged):
        assert deliveries_of(pg_database, event["event_id"]) == []
    # The forged message never reached the queue (RabbitMQ closed the channel, above).
    assert {r.outcome for r in replays} == {ReplayOutcome.REFUSED}
    assert {r.detail for r in replays} == {wrong_agency["reason"], no_user["reason"]}


def test_a_reject_found_after_the_202_over_rabbitmq_names_the_api_key(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str, smtp: SmtpCatcher
) -> None:
    """The API publishes as notifier's own broker user, naming the key in a header."""
    settings = rabbit_settings(
        amqp_url, pg_url, queue_prefix, adapters={"email": {"host": "127.0.0.1", "port": smtp.port}}
    )
    publisher = ApiKeys(pg_database).create("motcua-a", ["publish"], [AGENCY_A])
    event = sample_event(0, status=Status.RESULT_READY, event_id=uuid.uuid4())
    event["applicant"]["contacts"] = {"phone": "0912345678"}  # SMS is off here: no contact
    app = Notifier(settings)
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        posted = httpx.post(f"{api.base_url}/v1/events", json=event, headers=bearer(publisher))
        assert posted.status_code == 202
        wait_until(lambda: rejects_of(pg_database))
    [reject] = rejects_of(pg_database)
    assert reject["reason"].startswith("no usable contact")
    assert reject["source"] == "amqp"
    assert (reject["submitter_kind"], reject["submitter_name"]) == ("api-key", "motcua-a")
    assert reject["submitter_agencies"] == [AGENCY_A]
