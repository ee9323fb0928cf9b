"""Delivery webhooks: the simulator POSTs them over HTTP to a local catcher, and the
adapter's ``parse_receipt`` reads what was caught, exactly as ``notifier api`` would."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from notifier_simulators.zalo import ZaloSimulator
from notifier_zalo import ZaloSettings, ZaloZnsAdapter

from notifier.adapter import InvalidReceipt, OutboundMessage, ReceiptRequest, SendResult


class Catcher:
    """A webhook endpoint keeping each request as the API would hand it over."""

    def __init__(self) -> None:
        self.requests: list[ReceiptRequest] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                catcher.requests.append(
                    ReceiptRequest(
                        method="POST",
                        headers={k.lower(): v for k, v in self.headers.items()},
                        query={},
                        body=body,
                        received_at=time.time(),
                    )
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/receipts/zalo"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    c = Catcher()
    yield c
    c.close()


Receive = Callable[..., ReceiptRequest]


@pytest.fixture
def receive(sim: ZaloSimulator, catcher: Catcher) -> Receive:
    """Have the simulator deliver a webhook; return the request the catcher got."""

    def deliver(tracking_id: str, **options: Any) -> ReceiptRequest:
        response = sim.send_receipt(catcher.url, tracking_id, **options)
        assert response.status_code == 200
        return catcher.requests[-1]

    return deliver


def parse(settings: ZaloSettings, request: ReceiptRequest) -> list[Any]:
    return ZaloZnsAdapter.parse_receipt(settings, request)


def test_valid_receipt_names_the_delivery(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    delivery_id = uuid.uuid4()
    request = receive(str(delivery_id), msg_id="zalo-msg-1")
    assert request.headers["x-zevent-signature"].startswith("mac=")
    [receipt] = parse(make_settings(), request)
    assert receipt.delivered
    assert receipt.delivery_id == delivery_id
    assert receipt.provider_message_id == "zalo-msg-1"


def test_receipt_of_a_sent_message(
    sim: ZaloSimulator,
    receive: Receive,
    make_settings: Callable[..., ZaloSettings],
    make_adapter: Callable[..., ZaloZnsAdapter],
) -> None:
    delivery_id = uuid.uuid4()
    adapter = make_adapter()
    outbound = OutboundMessage(
        delivery_id=delivery_id,
        event_id=uuid.uuid4(),
        channel="zalo",
        recipient="+84901888484",
        language="vi",
        parts={"template_id": "245009", "template_data": '{"customer_name": "Lê Thị Hồng"}'},
        dossier_code="000.00.12.H29-231025-0001",
        agency_code="000.00.12.H29",
        status="result_ready",
    )

    async def run() -> SendResult:
        try:
            return await adapter.send(outbound)
        finally:
            await adapter.close()

    result = asyncio.run(run())
    [receipt] = parse(make_settings(), receive(str(delivery_id)))
    assert receipt.delivery_id == delivery_id
    assert receipt.provider_message_id == result.provider_message_id


def test_signature_without_mac_prefix_is_accepted(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    delivery_id = uuid.uuid4()
    request = receive(str(delivery_id), mac_prefix=False)
    assert not request.headers["x-zevent-signature"].startswith("mac=")
    [receipt] = parse(make_settings(), request)
    assert receipt.delivery_id == delivery_id


def test_bad_signature_is_refused(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    request = receive(str(uuid.uuid4()), secret="not-the-oa-secret")
    with pytest.raises(InvalidReceipt):
        parse(make_settings(), request)


def test_tampered_body_is_refused(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    request = receive(str(uuid.uuid4()))
    other = str(uuid.uuid4()).encode()
    document = json.loads(request.body)
    tampered = request.body.replace(document["message"]["tracking_id"].encode(), other)
    with pytest.raises(InvalidReceipt):
        parse(
            make_settings(),
            ReceiptRequest(request.method, request.headers, {}, tampered, request.received_at),
        )


def test_missing_signature_is_refused(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    request = receive(str(uuid.uuid4()))
    headers = {k: v for k, v in request.headers.items() if k != "x-zevent-signature"}
    with pytest.raises(InvalidReceipt):
        parse(
            make_settings(), ReceiptRequest("POST", headers, {}, request.body, request.received_at)
        )


def test_a_signed_retry_hours_later_is_taken_and_one_past_the_window_is_ignored(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    # Zalo retries for hours (a blog reports 12 h), keeping the first timestamp: a
    # correctly signed retry is taken (the core dedupes it by its nonce)...
    five_hours_ago = int((time.time() - 5 * 3600) * 1000)
    request = receive(str(uuid.uuid4()), msg_id="zalo-msg-late", timestamp_ms=five_hours_ago)
    [receipt] = parse(make_settings(), request)
    assert receipt.provider_message_id == "zalo-msg-late"
    # ...and past the window it is acknowledged and ignored, not refused: a refusal
    # would only make Zalo retry, and perhaps turn the webhook off.
    assert parse(make_settings(receipt_max_age_s=600), request) == []


def test_a_signed_webhook_stamped_far_in_the_future_is_ignored_not_refused(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    request = receive(str(uuid.uuid4()), timestamp_ms=int((time.time() + 2 * 86_400) * 1000))
    assert parse(make_settings(), request) == []


def test_a_retry_signed_again_is_the_same_report(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    tracking = str(uuid.uuid4())
    first = receive(tracking, msg_id="zalo-msg-7", timestamp_ms=int(time.time() * 1000) - 30_000)
    again = receive(tracking, msg_id="zalo-msg-7", timestamp_ms=int(time.time() * 1000))
    assert first.headers["x-zevent-signature"] != again.headers["x-zevent-signature"]
    [one] = parse(make_settings(), first)
    [other] = parse(make_settings(), again)
    assert one.nonce == other.nonce


def test_a_timestamp_that_is_not_a_number_is_refused_before_the_signature(
    make_settings: Callable[..., ZaloSettings],
) -> None:
    # A lone surrogate cannot be encoded to compute the signature: refused (403), not
    # a server error.
    body = json.dumps({"app_id": "x", "timestamp": "\ud800"}).encode()
    request = ReceiptRequest("POST", {"x-zevent-signature": "mac=00"}, {}, body, time.time())
    with pytest.raises(InvalidReceipt, match="not a number"):
        parse(make_settings(), request)


def test_other_events_are_ignored(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    request = receive(str(uuid.uuid4()), event_name="user_send_text")
    assert parse(make_settings(), request) == []


def test_other_events_still_need_a_signature(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    request = receive(str(uuid.uuid4()), event_name="user_send_text", secret="wrong")
    with pytest.raises(InvalidReceipt):
        parse(make_settings(), request)


def test_foreign_tracking_id_falls_back_to_msg_id(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    [receipt] = parse(make_settings(), receive("order-42", msg_id="m-42"))
    assert receipt.delivery_id is None
    assert receipt.provider_message_id == "m-42"


def test_receipts_need_the_oa_secret_key(
    receive: Receive, make_settings: Callable[..., ZaloSettings]
) -> None:
    request = receive(str(uuid.uuid4()))
    with pytest.raises(InvalidReceipt, match="oa_secret_key"):
        parse(make_settings(oa_secret_key=None), request)
    with pytest.raises(InvalidReceipt):
        parse(make_settings(oa_secret_key="another-oa-secret"), request)


def test_oa_id_signature_only_when_configured(
    sim: ZaloSimulator, make_settings: Callable[..., ZaloSettings]
) -> None:
    body, headers = sim.build_receipt(str(uuid.uuid4()))
    timestamp = json.loads(body)["timestamp"]
    headers["X-ZEvent-Signature"] = "mac=" + sim.webhook_signature(
        body, timestamp, signer_id=sim.oa_id
    )
    request = ReceiptRequest(
        "POST", {k.lower(): v for k, v in headers.items()}, {}, body, time.time()
    )
    with pytest.raises(InvalidReceipt):
        parse(make_settings(), request)
    assert parse(make_settings(oa_id=sim.oa_id), request)


def test_get_is_acknowledged_without_receipts(make_settings: Callable[..., ZaloSettings]) -> None:
    request = ReceiptRequest("GET", {}, {}, b"", time.time())
    assert parse(make_settings(), request) == []
