"""The Zalo ZNS adapter against notifier's adapter contract kit, over real HTTP to the
Zalo simulator (notifier_simulators.zalo), with its OA tokens in a real TokenStore on
SQLite: every adapter refreshes them through the simulator's OAuth endpoint."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from notifier_simulators.zalo import ZaloSimulator
from notifier_zalo import ZaloZnsAdapter
from notifier_zalo.receipts import SIGNATURE_HEADER, signature

from notifier.adapter import AdapterContext, OutboundMessage, ReceiptRequest
from notifier.store import Database
from notifier.store.migrate import upgrade
from notifier.store.tokens import TokenStore
from notifier.testing import AdapterContract, make_context

REPO = Path(__file__).resolve().parents[3]

APP_ID = "1234567890123456789"
APP_SECRET = "contract-app-secret-Xy7"
OA_SECRET = "contract-oa-secret-Qw3"
OTHER_SECRET = "another-oa-secret-Zz9"
STORE_KEY = "k" * 32
TIMEOUT_S = 0.5
LATENCY_S = 1.5  # past TIMEOUT_S: ZNS answers too late

# Each simulator's token store (one SQLite database per test's provider).
_STORES: weakref.WeakKeyDictionary[ZaloSimulator, TokenStore] = weakref.WeakKeyDictionary()


def closed_port() -> int:
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signed_webhook(
    settings: Any,
    document: dict[str, Any],
    *,
    secret: str | None = None,
    signer_id: str | None = None,
) -> ReceiptRequest:
    """A delivery webhook as Zalo POSTs it, signed per notifier_zalo.receipts."""
    body = json.dumps(document, separators=(",", ":")).encode()
    key = settings.oa_secret_key.get_secret_value() if secret is None else secret
    mac = signature(signer_id or settings.app_id, body, str(document["timestamp"]), key)
    return ReceiptRequest(
        method="POST",
        headers={"content-type": "application/json", SIGNATURE_HEADER: f"mac={mac}"},
        query={},
        body=body,
        received_at=time.time(),
    )


def delivered_event(app_id: str, delivery_id: uuid.UUID) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "app_id": app_id,
        "sender": {"id": "sim-oa-id"},
        "recipient": {"id": "84901888484"},
        "event_name": "user_received_message",
        "message": {
            "msg_id": uuid.uuid4().hex,
            "tracking_id": str(delivery_id),
            "delivery_time": str(now_ms),
        },
        "timestamp": str(now_ms),
    }


def user_text_event(app_id: str, user_id: str, text: str) -> dict[str, Any]:
    """A user's text to the OA (``user_send_text``), as public clients show it."""
    return {
        "app_id": app_id,
        "user_id_by_app": "app-" + user_id,
        "event_name": "user_send_text",
        "timestamp": str(int(time.time() * 1000)),
        "sender": {"id": user_id},
        "recipient": {"id": "sim-oa-id"},
        "message": {"msg_id": uuid.uuid4().hex, "text": text},
    }


class TestZaloContract(AdapterContract):
    adapter_class = ZaloZnsAdapter
    templates_dir = REPO / "config" / "templates"
    receipt_max_age_s = 86_400
    inbound_max_age_s = 86_400

    @contextmanager
    def provider(self) -> Iterator[ZaloSimulator]:
        with tempfile.TemporaryDirectory() as folder:
            database = Database(f"sqlite:///{folder}/tokens.db")
            upgrade(database)
            try:
                with ZaloSimulator(
                    app_id=APP_ID, app_secret=APP_SECRET, oa_secret_key=OA_SECRET
                ) as simulator:
                    _STORES[simulator] = TokenStore(database, STORE_KEY)
                    yield simulator
            finally:
                database.dispose()

    def make_context(self, provider: ZaloSimulator) -> AdapterContext:
        # As after `notifier tokens set zalo`: the live refresh token, no access token.
        store = _STORES[provider]
        store.put("zalo", refresh_token=provider.current_refresh_token)
        return make_context(tokens=store)

    def message(self, **overrides: Any) -> OutboundMessage:
        # What config/templates/vi/zalo.toml renders for "received".
        data = {
            "customer_name": "Nguyễn Văn An",
            "dossier_code": "000.00.12.H29-261126-0001",
            "procedure_name": "Cấp bản sao trích lục hộ tịch",
            "status_name": "Đã tiếp nhận",
            "agency_name": "UBND phường Hàng Bạc",
            "due_date": "03/12/2026",
        }
        overrides.setdefault(
            "parts",
            {"template_id": "245002", "template_data": json.dumps(data, ensure_ascii=False)},
        )
        return super().message(**overrides)

    def valid_settings(self, provider: ZaloSimulator) -> dict[str, Any]:
        return {
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            "oa_secret_key": OA_SECRET,
            "base_url": provider.base_url,
            "oauth_url": provider.oauth_url,
            "timeout_s": TIMEOUT_S,
        }

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [
            {"base_url": "ftp://business.openapi.zalo.me"},
            {"oauth_url": "https://oauth.zaloapp.com/v4 /oa/access_token"},
            {"app_id": "has space"},
            {"app_secret": "   "},
            {"timeout_s": 0},
            {"param_limits": {"customer_name": 1}},
            {"quota_error_codes": "-1200"},
            {"receipt_max_age_s": 0},
        ]

    def cause_temporary_failure(self, provider: ZaloSimulator) -> None:
        provider.set_outage(True)

    def recover(self, provider: ZaloSimulator) -> None:
        provider.set_outage(False)

    def cause_permanent_failure(self, provider: ZaloSimulator) -> None:
        provider.not_zalo_user(self.recipient())  # -118: no Zalo account

    def cause_timeout(self, provider: ZaloSimulator) -> None:
        provider.latency_s = LATENCY_S  # ZNS sends only; OAuth refreshes stay fast

    def unreachable_settings(self, provider: ZaloSimulator) -> dict[str, Any]:
        nowhere = f"http://127.0.0.1:{closed_port()}"
        return {
            **self.valid_settings(provider),
            "base_url": nowhere,
            "oauth_url": nowhere + "/v4/oa/access_token",
        }

    def no_answer_settings(self, provider: ZaloSimulator, url: str) -> dict[str, Any]:
        return {**self.valid_settings(provider), "base_url": url}  # OAuth stays answered

    def sent_reference(self, provider: ZaloSimulator) -> str | None:
        messages = provider.messages
        return messages[-1].tracking_id if messages else None

    def valid_receipt(self, settings: Any, delivery_id: uuid.UUID) -> ReceiptRequest:
        return signed_webhook(settings, delivered_event(settings.app_id, delivery_id))

    def valid_inbound(self, settings: Any, sender: str, text: str) -> ReceiptRequest:
        return signed_webhook(settings, user_text_event(settings.app_id, sender, text))

    def forged_inbound(self, settings: Any, sender: str, text: str) -> list[ReceiptRequest]:
        genuine = self.valid_inbound(settings, sender, text)
        document = json.loads(genuine.body)
        return [
            *super().forged_inbound(settings, sender, text),  # no signature header
            signed_webhook(settings, document, secret=OTHER_SECRET),
            # Another text under the genuine signature.
            replace(genuine, body=genuine.body.replace(b'"HD"', b'"STOP"')),
            signed_webhook(settings, {**document, "app_id": "9999999999999999999"}),
        ]

    def forged_receipts(self, settings: Any, delivery_id: uuid.UUID) -> list[ReceiptRequest]:
        genuine = self.valid_receipt(settings, delivery_id)
        document = json.loads(genuine.body)
        other = str(uuid.uuid4())
        return [
            *super().forged_receipts(settings, delivery_id),  # no signature header
            signed_webhook(settings, document, secret=OTHER_SECRET),  # another key
            replace(genuine, body=genuine.body.replace(str(delivery_id).encode(), other.encode())),
            signed_webhook(settings, document, signer_id="9999999999999999999"),
            # signed correctly, but for another Zalo app
            signed_webhook(settings, {**document, "app_id": "9999999999999999999"}),
            replace(genuine, headers={**genuine.headers, SIGNATURE_HEADER: "mac=" + "0" * 64}),
        ]
