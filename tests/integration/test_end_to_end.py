"""The foundation path on the real RabbitMQ and PostgreSQL: a TTHC system publishes plain
JSON with pika, the worker delivers an email (to a real SMTP server) and a portal
notification (read back through the inbox API)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import httpx
import pika
import pytest
import sqlalchemy as sa
from notifier_simulators.smtp import SmtpCatcher

from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.schema import deliveries, rejected_events
from notifier.web.api import create_api
from tests.support import RunningWorker, ServedApi, rabbit_settings, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as catcher:
        yield catcher


@pytest.fixture
def app(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str, smtp: SmtpCatcher
) -> Notifier:
    settings = rabbit_settings(
        amqp_url,
        pg_url,
        queue_prefix,
        adapters={"email": {"host": "127.0.0.1", "port": smtp.port, "pool_size": 2}},
    )
    return Notifier(settings)


def publish_raw(app: Notifier, bodies: list[bytes]) -> None:
    """Publish as a non-Python TTHC system would: plain AMQP, plain JSON, persistent."""
    events = app.settings.events
    connection = pika.BlockingConnection(pika.URLParameters(app.settings.broker_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.exchange_declare(events.exchange, exchange_type="topic", durable=True)
    channel.queue_declare(events.queue, durable=True)
    channel.queue_bind(events.queue, events.exchange, events.routing_key)
    for body in bodies:
        channel.basic_publish(
            events.exchange,
            events.routing_key,
            body,
            # user_id: who publishes (RabbitMQ checks it is this connection's user).
            pika.BasicProperties(content_type="application/json", delivery_mode=2, user_id="guest"),
            mandatory=True,
        )
    connection.close()


def vietnamese_event(**contacts: Any) -> dict[str, Any]:
    event = sample_event(1, event_id=uuid.uuid4())
    event["dossier"]["status"] = "Được tiếp nhận"  # a Vietnamese status name is accepted
    event["applicant"].update(
        name="Nguyễn Thị Minh Khai",
        language="vi",
        contacts=contacts or {"email": "minh.khai@example.vn", "portal_account_id": "vneid-0042"},
    )
    return event


def delivery_statuses(database: Database) -> list[tuple[str, str]]:
    with database.engine.connect() as connection:
        rows = connection.execute(sa.select(deliveries.c.channel, deliveries.c.status))
        return sorted((r.channel, r.status) for r in rows)


def test_event_becomes_email_and_inbox_item_once(
    app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    event = vietnamese_event()
    body = json.dumps(event, ensure_ascii=False).encode()
    with RunningWorker(app):
        publish_raw(app, [body])
        wait_until(
            lambda: delivery_statuses(pg_database) == [("email", "sent"), ("portal", "delivered")]
        )
        # The same event again (a publisher retry): nothing new is sent.
        publish_raw(app, [body])
        wait_until(lambda: _events_consumed(app))

    [message] = smtp.messages
    assert message["Subject"] == (
        f"Hồ sơ {event['dossier']['code']} đã được tiếp nhận, hẹn trả kết quả ngày 03/12/2026"
    )
    assert message["To"] == "minh.khai@example.vn"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Kính gửi Ông/Bà Nguyễn Thị Minh Khai" in text
    assert "Nguyễn Thị Minh Khai" in html
    assert "<html" in html.lower()
    assert event["dossier"]["procedure"]["name"] in text

    keys = ApiKeys(pg_database)
    portal_key = keys.create("portal-backend", ["inbox"], [])
    with ServedApi(create_api(app)) as api:
        headers = {"Authorization": f"Bearer {portal_key}"}
        response = httpx.get(f"{api.base_url}/v1/inbox/vneid-0042/notifications", headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        unread = httpx.get(
            f"{api.base_url}/v1/inbox/vneid-0042/unread-count", headers=headers
        ).json()
    assert len(page["items"]) == 1
    item = page["items"][0]
    assert item["dossier_code"] == event["dossier"]["code"]
    assert "tiếp nhận" in item["title"]
    assert item["read"] is False
    assert unread == {"unread": 1}


def _events_consumed(app: Notifier) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(app.settings.broker_url))
    try:
        queue = connection.channel().queue_declare(app.settings.events.queue, passive=True)
        return queue.method.message_count == 0
    finally:
        connection.close()


INVALID_EVENTS: list[tuple[str, bytes, str]] = [
    ("bad json", b'{"schema_version": "1", "event_id": ', "not valid JSON"),
    ("not an object", b"[1, 2, 3]", "must be a JSON object"),
    (
        "wrong version",
        json.dumps({**vietnamese_event(), "schema_version": "9"}).encode(),
        "unsupported schema_version",
    ),
    (
        "unknown status",
        json.dumps(
            {**vietnamese_event(), "dossier": {**vietnamese_event()["dossier"], "status": "42"}}
        ).encode(),
        "unknown status",
    ),
    ("wrong type", json.dumps({**vietnamese_event(), "occurred_at": 12}).encode(), "occurred_at"),
    (
        "no usable contact",
        json.dumps(
            vietnamese_event(phone_note_only=None)
            | {"applicant": {"name": "Trần Văn Đức", "contacts": {}}}
        ).encode(),
        "no usable contact",
    ),
    ("not utf-8", b'{"schema_version": "1", "name": "\xff\xfe"}', "not valid UTF-8"),
    ("too large", b'{"pad": "' + b"x" * 70_000 + b'"}', "over the 65536-byte limit"),
]


def test_each_invalid_event_is_rejected_with_its_reason_and_the_next_is_sent(
    app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    good = vietnamese_event()
    bodies = [body for _name, body, _reason in INVALID_EVENTS]
    with RunningWorker(app):
        publish_raw(app, [*bodies, json.dumps(good).encode()])
        wait_until(lambda: len(smtp.messages) == 1)
        wait_until(
            lambda: (
                _reject_reasons(pg_database)
                and len(_reject_reasons(pg_database)) == len(INVALID_EVENTS)
            )
        )

    reasons = _reject_reasons(pg_database)
    for name, _body, expected in INVALID_EVENTS:
        assert any(expected in reason for reason in reasons), f"{name}: {reasons}"
    assert delivery_statuses(pg_database) == [("email", "sent"), ("portal", "delivered")]


def _reject_reasons(database: Database) -> list[str]:
    with database.engine.connect() as connection:
        return [r.reason for r in connection.execute(sa.select(rejected_events.c.reason))]


class _IngestMessages(dramatiq.Middleware):
    """Counts the events in each ingest message the bridge sends."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if message.actor_name == "ingest":
            self.sizes.append(len(message.args[0]))


def test_the_bridge_hands_events_to_ingest_in_groups(
    app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    bodies = [
        json.dumps(
            vietnamese_event() | {"event_id": str(uuid.uuid4())}, ensure_ascii=False
        ).encode()
        for _ in range(60)
    ]
    publish_raw(app, bodies)  # waiting in the queue before the worker starts
    counted = _IngestMessages()
    app.broker.add_middleware(counted)
    with RunningWorker(app):
        wait_until(lambda: len(smtp.messages) == 60, timeout=60)
        wait_until(lambda: _events_consumed(app))
    assert sum(counted.sizes) == 60
    assert max(counted.sizes) > 1
    assert len(counted.sizes) <= 60 / app.settings.events.batch_size + 5
    with pg_database.engine.connect() as connection:
        emails = connection.execute(
            sa.select(sa.func.count()).where(deliveries.c.channel == "email")
        ).scalar_one()
    assert emails == 60
