"""The webhook adapter against notifier's adapter contract kit, over real HTTP to a local
app that verifies every signature (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from notifier_webhook import WebhookAdapter

from notifier.adapter import ReceiptRequest
from notifier.testing import OMIT, AdapterContract

REPO = Path(__file__).resolve().parents[3]
OTHER_SECRET = "a-different-secret-of-32-characters!!"


def signed_receipt(
    secret: str, document: Any, *, timestamp: int | None = None, received_at: float | None = None
) -> ReceiptRequest:
    """A receipt as the app would POST it to /v1/receipts/webhook (signed per the README)."""
    body = json.dumps(document).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return ReceiptRequest(
        method="POST",
        headers={
            "content-type": "application/json",
            "x-notifier-timestamp": stamp,
            "x-notifier-signature": f"sha256={digest}",
        },
        query={},
        body=body,
        received_at=time.time() if received_at is None else received_at,
    )


class TestWebhookContract(AdapterContract):
    adapter_class = WebhookAdapter
    receipt_max_age_s = 300
    # config/templates/<lang>/app_push.toml must render for every status.
    templates_dir = REPO / "config" / "templates"

    # The provider is the verifying app of conftest.py (a fixture), so instead of the
    # provider() hook this overrides the kit's fixture.
    @pytest.fixture
    def kit_provider(self, app: Any) -> Any:
        return app

    def valid_settings(self, provider: Any) -> dict[str, Any]:
        return {"url": provider.url, "secret": provider.secret, "timeout_s": 0.5}

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [
            {"url": "ftp://app.example.vn/notify"},
            {"url": "http://app.example.vn/notify"},  # personal data in clear
            {"url": "https://user:pw@app.example.vn/notify"},
            {"secret": "too-short"},
            {"secret": OMIT},
            {"timeout_s": 0},
            {"receipt_max_age_s": 5},
        ]

    def cause_temporary_failure(self, provider: Any) -> None:
        provider.server.fail_next(503, headers={"Retry-After": "7"})

    def cause_permanent_failure(self, provider: Any) -> None:
        provider.server.fail_next(422, body={"error": "unknown account"})

    def cause_timeout(self, provider: Any) -> None:
        provider.server.hang_next(seconds=5)

    def unreachable_settings(self, provider: Any) -> dict[str, Any]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return {**self.valid_settings(provider), "url": f"http://127.0.0.1:{port}/notify"}

    def no_answer_settings(self, provider: Any, url: str) -> dict[str, Any]:
        return {**self.valid_settings(provider), "url": url + "/notify"}

    def sent_reference(self, provider: Any) -> str | None:
        request = provider.server.last_request
        return None if request is None else request.header("idempotency-key")

    def valid_receipt(self, settings: Any, delivery_id: uuid.UUID) -> ReceiptRequest:
        secret = settings.secret.get_secret_value()
        return signed_receipt(secret, {"delivery_id": str(delivery_id), "delivered": True})

    def forged_receipts(self, settings: Any, delivery_id: uuid.UUID) -> list[ReceiptRequest]:
        document = {"delivery_id": str(delivery_id), "delivered": True}
        genuine = self.valid_receipt(settings, delivery_id)
        return [
            *super().forged_receipts(settings, delivery_id),  # no signature headers at all
            replace(genuine, body=genuine.body.replace(b"true", b"false")),  # changed after
            signed_receipt(OTHER_SECRET, document),  # signed with another key
            replace(genuine, method="GET"),
        ]
