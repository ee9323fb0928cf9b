"""Shared fixtures of the SMS adapter tests: the adapter context, messages, the
gateway simulators and a catcher for delivery-report callbacks.

Everything goes over real HTTP on 127.0.0.1: nothing in httpx is patched.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from notifier_simulators.sms import EsmsSimulator, SpeedSmsSimulator

from notifier.adapter import AdapterContext, OutboundMessage, ReceiptRequest

BRANDNAME = "DVCQG"
ESMS_KEY, ESMS_SECRET = "esms-api-key", "esms-secret-key"
SPEEDSMS_TOKEN = "speedsms-access-token"

MessageFactory = Callable[..., OutboundMessage]


@pytest.fixture
def context() -> AdapterContext:
    # The SMS adapters use only the network seam; None means the real network.
    return AdapterContext(inbox=None, tokens=None, http_transport=None)  # type: ignore[arg-type]


@pytest.fixture
def make_message() -> MessageFactory:
    def make(
        text: str = "Hồ sơ 000.00.12.H29-231025-0001 đã được tiếp nhận. Ngày hẹn trả: 27/10/2025.",
        recipient: str = "+84 90 188 8484",
        delivery_id: uuid.UUID | None = None,
    ) -> OutboundMessage:
        return OutboundMessage(
            delivery_id=delivery_id or uuid.uuid4(),
            event_id=uuid.uuid4(),
            channel="sms",
            recipient=recipient,
            language="vi",
            parts={"text": text},
            dossier_code="000.00.12.H29-231025-0001",
            agency_code="000.00.12.H29",
            status="received",
        )

    return make


@pytest.fixture
def esms() -> Iterator[EsmsSimulator]:
    with EsmsSimulator(api_key=ESMS_KEY, secret_key=ESMS_SECRET, brandnames={BRANDNAME}) as sim:
        yield sim


@pytest.fixture
def speedsms() -> Iterator[SpeedSmsSimulator]:
    with SpeedSmsSimulator(access_token=SPEEDSMS_TOKEN) as sim:
        yield sim


class ReceiptCatcher:
    """A stand-in for ``notifier api``'s receipts endpoint: keeps each call as the
    :class:`ReceiptRequest` the API would hand to ``parse_receipt`` (the last segment of
    ``/v1/receipts/<name>/<token>`` as its ``token``; ``paths`` keeps the route)."""

    def __init__(self) -> None:
        self.received: list[ReceiptRequest] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._keep()

            def do_POST(self) -> None:
                self._keep()

            def _keep(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                route, token = split.path, None
                parts = split.path.split("/")
                if len(parts) == 5 and parts[1:3] == ["v1", "receipts"]:
                    route, token = "/".join(parts[:4]), unquote(parts[4])
                request = ReceiptRequest(
                    method=self.command,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    query=dict(parse_qsl(split.query, keep_blank_values=True)),
                    body=body,
                    received_at=time.time(),
                    token=token,
                )
                with catcher._lock:
                    catcher.received.append(request)
                    catcher.paths.append(route)
                answer = b'{"received": 1}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/receipts/esms"

    def __enter__(self) -> ReceiptCatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def receipt_catcher() -> Iterator[ReceiptCatcher]:
    with ReceiptCatcher() as catcher:
        yield catcher
