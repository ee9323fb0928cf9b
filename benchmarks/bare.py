"""The bare reference: the same work as notifier with no framework at all.

pika consumes raw events (prefetch 100); each event becomes four deliveries handled
on one asyncio loop thread: one email over a pool of aiosmtplib sessions (the same
multipart text + html MIME message, written by the same function as notifier's),
one eSMS POST and one ZNS POST over one pooled httpx client, and one PostgreSQL
INSERT per delivery (the portal's is its inbox row) on a small pool of psycopg
connections. The raw message is acked
when its four deliveries are recorded. No validation, templates, dedupe, claims,
retries, or per-delivery queue: the floor a hand-written loop would reach.

Run by benchmarks/run.py with one JSON argument (see ``main``); prints a JSON line
``ready``, then after ``count`` events a JSON line with its figures, and exits.
"""

from __future__ import annotations

import asyncio
import html
import json
import sys
import threading
import time
import uuid
from functools import partial
from typing import Any

import aiosmtplib
import httpx
import pika
import psycopg
from notifier_email.message import build_message
from notifier_email.settings import EmailSettings

from notifier.adapter import OutboundMessage

# The same MIME writer as notifier's email adapter: the comparison is about the
# framework, not the message format.
_SETTINGS = EmailSettings(host="127.0.0.1", from_address="bench@example.com",
                          from_name="Cổng Dịch vụ công")
# An HTML layout of the size of notifier's (inline styles, ~4.5 KB rendered).
_LAYOUT = (
    '<!DOCTYPE html><html lang="vi"><head><meta charset="utf-8"></head>'
    '<body style="margin:0;padding:0;background-color:#f3f4f6;">'
    + '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" '
    'style="background-color:#f3f4f6;"><tr><td align="center" style="padding:24px 12px;">' * 9
    + '<p style="margin:0;font-family:Arial,Helvetica,sans-serif;font-size:15px;'
    'line-height:1.6;color:#1f2937;">{{ body }}</p>'
    + "</td></tr></table>" * 9
    + "<p>Thư này được gửi tự động từ hệ thống thông báo của Cổng Dịch vụ công.</p>" * 20
    + "</body></html>"
)
_FROM = "bench@example.com"
_ESMS_PATH = "/MainService.svc/json/SendMultipleMessage_V4_post_json/"
_INSERT = (
    "INSERT INTO bare_deliveries (delivery_id, event_id, channel, recipient, content, "
    "status, created_at) VALUES (%s, %s, %s, %s, %s, %s, now())"
)


class Pool:
    """An asyncio queue of ready connections."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()

    async def run(self, operation: Any) -> Any:
        item = await self.items.get()
        try:
            return await operation(item)
        finally:
            self.items.put_nowait(item)


class Bare:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.smtp = Pool()
        self.db = Pool()
        self.http: httpx.AsyncClient | None = None
        self.errors = 0

    async def open(self) -> None:
        config = self.config
        for _ in range(config["smtp_pool"]):
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=config["smtp_port"], start_tls=False, timeout=10
            )
            await client.connect()
            self.smtp.items.put_nowait(client)
        for _ in range(config["db_pool"]):
            connection = await psycopg.AsyncConnection.connect(
                config["database_url"], autocommit=True
            )
            self.db.items.put_nowait(connection)
        self.http = httpx.AsyncClient(
            timeout=10,
            limits=httpx.Limits(max_connections=config["http_connections"]),
        )

    async def handle(self, body: bytes) -> None:
        event = json.loads(body)
        contacts = event["applicant"]["contacts"]
        await asyncio.gather(
            self.email(event, contacts["email"]),
            self.sms(event, contacts["phone"]),
            self.zalo(event, contacts["zalo"]["phone"]),
            self.record(event, "portal", contacts["portal_account_id"], self.text(event)),
        )

    @staticmethod
    def text(event: dict[str, Any]) -> str:
        dossier = event["dossier"]
        return (
            f"Kính gửi {event['applicant']['name']}, hồ sơ {dossier['code']} "
            f"({dossier['procedure']['name']}) tại {event['agency']['name']}: "
            f"trạng thái {dossier['status']}. Tra cứu: {dossier['tracking_url']}"
        )

    @staticmethod
    def email_text(event: dict[str, Any]) -> str:
        """About the size of notifier's rendered email text (~750 characters)."""
        dossier = event["dossier"]
        return (
            f"Kính gửi Ông/Bà {event['applicant']['name']},\n\n"
            f"Hồ sơ số {dossier['code']} ({dossier['procedure']['name']}) tại "
            f"{event['agency']['name']} đã chuyển sang trạng thái {dossier['status']}.\n"
            f"Lý do, nếu có: {dossier.get('reason') or 'không'}.\n"
            f"Ngày hẹn trả kết quả: {dossier.get('due_date') or 'chưa có'}.\n"
            f"Thủ tục: {dossier['procedure']['code']} {dossier['procedure']['name']}; "
            f"cơ quan giải quyết: {event['agency']['name']} ({event['agency']['code']}).\n\n"
            f"Ông/Bà có thể tra cứu tình trạng hồ sơ tại {dossier['tracking_url']} "
            "bằng mã hồ sơ ở trên.\n\n"
            "Thư này được gửi tự động từ hệ thống thông báo của Cổng Dịch vụ công. Vui lòng "
            "không trả lời thư này. Nếu cần hỗ trợ về hồ sơ, Ông/Bà vui lòng liên hệ "
            f"{event['agency']['name']}.\n"
        )

    async def email(self, event: dict[str, Any], to: str) -> None:
        delivery_id = uuid.uuid4()
        text = self.email_text(event)
        body = _LAYOUT.replace("{{ body }}", html.escape(text))
        subject = f"Hồ sơ {event['dossier']['code']}: cập nhật trạng thái"
        outbound = OutboundMessage(
            delivery_id, delivery_id, "email", to, "vi",
            {"subject": subject, "text": text, "html": body},
            event["dossier"]["code"], event["agency"]["code"], event["dossier"]["status"],
        )
        data = build_message(_SETTINGS, outbound, to, f"<{delivery_id}@example.com>")

        async def send(client: aiosmtplib.SMTP) -> None:
            await client.sendmail(_FROM, [to], data)

        await self.smtp.run(send)
        await self.record(event, "email", to, text, delivery_id)

    async def sms(self, event: dict[str, Any], phone: str) -> None:
        assert self.http is not None
        delivery_id = uuid.uuid4()
        esms = self.config["esms"]
        text = f"Ho so {event['dossier']['code']}: trang thai {event['dossier']['status']}"
        response = await self.http.post(
            esms["base_url"] + _ESMS_PATH,
            json={
                "ApiKey": esms["api_key"],
                "SecretKey": esms["secret_key"],
                "Phone": phone,
                "Content": text,
                "Brandname": "CONG DVC",
                "SmsType": "2",
                "IsUnicode": "0",
                "Sandbox": "0",
                "RequestId": str(delivery_id),
            },
        )
        if response.json().get("CodeResult") != "100":
            self.errors += 1
        await self.record(event, "sms", phone, text, delivery_id)

    async def zalo(self, event: dict[str, Any], phone: str) -> None:
        assert self.http is not None
        delivery_id = uuid.uuid4()
        data = {
            "customer_name": event["applicant"]["name"][:30],
            "dossier_code": event["dossier"]["code"][:30],
            "status_name": event["dossier"]["status"],
        }
        response = await self.http.post(
            self.config["zalo_base_url"] + "/message/template",
            json={
                "phone": "84" + phone.lstrip("0"),
                "template_id": "245001",
                "template_data": data,
                "tracking_id": str(delivery_id),
            },
            headers={"access_token": self.config["zalo_token"]},
        )
        if response.json().get("error") != 0:
            self.errors += 1
        await self.record(event, "zalo", phone, json.dumps(data), delivery_id)

    async def record(
        self,
        event: dict[str, Any],
        channel: str,
        recipient: str,
        content: str,
        delivery_id: uuid.UUID | None = None,
    ) -> None:
        async def insert(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute(
                _INSERT,
                (delivery_id or uuid.uuid4(), event["event_id"], channel, recipient, content,
                 "sent"),
            )

        await self.db.run(insert)


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    bare = Bare(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bare-loop", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(bare.open(), loop).result(30)

    connection = pika.BlockingConnection(pika.URLParameters(config["amqp_url"]))
    channel = connection.channel()
    channel.queue_declare(config["queue"], durable=True)
    channel.basic_qos(prefetch_count=config["prefetch"])
    done = 0
    first: float | None = None
    last = 0.0

    def finished(tag: int, future: Any) -> None:
        nonlocal done, last
        if future.exception() is not None:
            bare.errors += 1
        last = time.time()
        done += 1
        connection.add_callback_threadsafe(partial(channel.basic_ack, tag))

    print(json.dumps({"ready": True}), flush=True)
    for method, _properties, body in channel.consume(config["queue"], inactivity_timeout=0.05):
        if method is not None:
            if first is None:
                first = time.time()
            future = asyncio.run_coroutine_threadsafe(bare.handle(body), loop)
            future.add_done_callback(partial(finished, method.delivery_tag))
        if done >= config["count"]:
            break
    connection.process_data_events(0)  # the last acks
    print(
        json.dumps(
            {"events": done, "first_consumed": first, "last_recorded": last, "errors": bare.errors}
        ),
        flush=True,
    )
    sys.stdin.readline()  # connections stay open until measured (their server CPU)
    channel.cancel()
    connection.close()


if __name__ == "__main__":
    main()
