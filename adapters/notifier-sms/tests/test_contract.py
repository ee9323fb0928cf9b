"""The SMS gateway adapters against notifier's adapter contract kit, over real HTTP:
eSMS and SpeedSMS to their simulators (notifier_simulators.sms), the configurable
http_sms adapter to a LocalHttpServer that checks its Authorization header."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from notifier_simulators.sms import EsmsSimulator, SpeedSmsSimulator
from notifier_sms import EsmsAdapter, HttpSmsAdapter, SpeedSmsAdapter

from notifier.adapter import ReceiptRequest
from notifier.testing import OMIT, AdapterContract, LocalHttpServer, RecordedRequest, Reply

REPO = Path(__file__).resolve().parents[3]

BRANDNAME = "DVCQG"
TIMEOUT_S = 0.5
LATENCY_S = 1.5  # past TIMEOUT_S: the gateway answers too late
ESMS_KEY, ESMS_SECRET = "contract-esms-api-key", "contract-esms-secret-key"
SPEEDSMS_TOKEN = "contract-speedsms-access-token"
RECEIPT_TOKEN = "contract-receipt-token-0123456789"
MO_PRIVATE_KEY = "contract-mo-private-key"
HTTP_SMS_BEARER = "Bearer contract-gateway-token-7731"
HTTP_SMS_RECEIPT_SECRET = "contract-http-sms-receipt-secret"


def closed_port() -> int:
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestEsmsContract(AdapterContract):
    adapter_class = EsmsAdapter
    templates_dir = REPO / "config" / "templates"
    inbound_max_age_s = 900

    def provider(self) -> EsmsSimulator:
        return EsmsSimulator(api_key=ESMS_KEY, secret_key=ESMS_SECRET, brandnames={BRANDNAME})

    def valid_settings(self, provider: EsmsSimulator) -> dict[str, Any]:
        return {
            "base_url": provider.base_url,
            "api_key": ESMS_KEY,
            "secret_key": ESMS_SECRET,
            "brandname": BRANDNAME,
            "timeout_s": TIMEOUT_S,
            "receipt_token": RECEIPT_TOKEN,
            "callback_url": "https://notifier.example.vn/v1/receipts/esms",
            "mo_private_key": MO_PRIVATE_KEY,
        }

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [
            {"base_url": "ftp://rest.esms.vn"},
            {"brandname": "MORE-THAN-11-CHARS"},
            {"receipt_token": "short"},
            {"receipt_token": OMIT},  # a callback_url without the token that proves it
            {"callback_url": "https://notifier.example.vn/v1/receipts/esms?token=abc"},
            {"sms_type": "CSKH"},
            {"timeout_s": 0},
            {"max_segments": 0},
        ]

    def cause_temporary_failure(self, provider: EsmsSimulator) -> None:
        provider.set_outage(True, retry_after=7)

    def recover(self, provider: EsmsSimulator) -> None:
        provider.set_outage(False)

    def cause_permanent_failure(self, provider: EsmsSimulator) -> None:
        provider.fail_next(code="99")  # phone blocked at eSMS

    def cause_timeout(self, provider: EsmsSimulator) -> None:
        provider.set_latency(LATENCY_S)

    def unreachable_settings(self, provider: EsmsSimulator) -> dict[str, Any]:
        return {**self.valid_settings(provider), "base_url": f"http://127.0.0.1:{closed_port()}"}

    def no_answer_settings(self, provider: EsmsSimulator, url: str) -> dict[str, Any]:
        return {**self.valid_settings(provider), "base_url": url}

    def sent_reference(self, provider: EsmsSimulator) -> str | None:
        # A retry of the same RequestId is answered 124 and recorded no second time.
        messages = provider.messages
        return messages[-1].request_id if messages else None

    def valid_receipt(self, settings: Any, delivery_id: uuid.UUID) -> ReceiptRequest:
        """eSMS's delivery report: a GET to CallbackUrl (its last path segment is our
        token)."""
        return ReceiptRequest(
            method="GET",
            headers={},
            query={
                "SMSID": uuid.uuid4().hex,
                "SendFailed": "0",
                "SendStatus": "5",
                "SendSuccess": "1",
                "TotalPrice": "750.0000",
                "TotalReceiver": "1",
                "TotalSent": "1",
                "RequestId": str(delivery_id),
                "TypeId": "2",
                "telcoid": "2",
                "phonenumber": "0901888484",
                "switchsmsid": "",
            },
            body=b"",
            received_at=time.time(),
            token=settings.receipt_token.get_secret_value(),
        )

    def valid_inbound(self, settings: Any, sender: str, text: str) -> ReceiptRequest:
        """eSMS's MO forward: a GET to our URL (its last path segment is our token),
        signed with the MO private key."""
        simulator = EsmsSimulator()
        simulator.mo_private_key = MO_PRIVATE_KEY
        return ReceiptRequest(
            method="GET",
            headers={},
            query=simulator.mo_params(sender, text),
            body=b"",
            received_at=time.time(),
            token=settings.receipt_token.get_secret_value(),
        )

    def forged_inbound(self, settings: Any, sender: str, text: str) -> list[ReceiptRequest]:
        genuine = self.valid_inbound(settings, sender, text)
        return [
            *super().forged_inbound(settings, sender, text),  # no token, no sign
            replace(genuine, token=RECEIPT_TOKEN[:-1] + "X"),
            replace(genuine, query={**genuine.query, "sign": "AAAAAAAAAAAAAAAAAAAAAA=="}),
            replace(genuine, query={k: v for k, v in genuine.query.items() if k != "sign"}),
            replace(genuine, query={**genuine.query, "content": "STOP"}),  # another text
        ]

    def forged_receipts(self, settings: Any, delivery_id: uuid.UUID) -> list[ReceiptRequest]:
        genuine = self.valid_receipt(settings, delivery_id)
        return [
            *super().forged_receipts(settings, delivery_id),  # no token at all
            replace(genuine, token=RECEIPT_TOKEN[:-1] + "X"),
            replace(genuine, token=""),
            # The deprecated ?token= form, wrong; and a right one that a wrong path
            # token does not let through.
            replace(genuine, token=None, query={**genuine.query, "token": "X" + RECEIPT_TOKEN}),
            replace(
                genuine, token="X" + RECEIPT_TOKEN, query={**genuine.query, "token": RECEIPT_TOKEN}
            ),
        ]


class TestSpeedSmsContract(AdapterContract):
    adapter_class = SpeedSmsAdapter
    templates_dir = REPO / "config" / "templates"
    not_applicable: ClassVar[dict[str, str]] = {
        "idempotency": (
            "SpeedSMS's API takes no client reference (no RequestId or idempotency key), "
            "so the delivery id cannot reach it; see notifier_sms.speedsms"
        ),
        "inbound_id": "SpeedSMS's incoming-SMS callback carries no message id",
    }

    def provider(self) -> SpeedSmsSimulator:
        return SpeedSmsSimulator(access_token=SPEEDSMS_TOKEN)

    def valid_settings(self, provider: SpeedSmsSimulator) -> dict[str, Any]:
        return {
            "base_url": provider.base_url,
            "access_token": SPEEDSMS_TOKEN,
            "brandname": BRANDNAME,
            "timeout_s": TIMEOUT_S,
            "receipt_token": RECEIPT_TOKEN,
        }

    def valid_inbound(self, settings: Any, sender: str, text: str) -> ReceiptRequest:
        """SpeedSMS's incoming-SMS callback: JSON POSTed to the dashboard's URL."""
        body = json.dumps({"type": "incoming", "phone": sender, "content": text})
        return ReceiptRequest(
            method="POST",
            headers={"content-type": "application/json"},
            query={},
            body=body.encode(),
            received_at=time.time(),
            token=settings.receipt_token.get_secret_value(),
        )

    def forged_inbound(self, settings: Any, sender: str, text: str) -> list[ReceiptRequest]:
        genuine = self.valid_inbound(settings, sender, text)
        return [
            *super().forged_inbound(settings, sender, text),  # no token at all
            replace(genuine, token=RECEIPT_TOKEN[:-1] + "X"),
        ]

    def valid_receipt(self, settings: Any, delivery_id: uuid.UUID) -> ReceiptRequest:
        """SpeedSMS's delivery-status callback: JSON POSTed to the dashboard's URL (its
        last path segment is our token), naming the message by tranId."""
        body = json.dumps({"type": "report", "tranId": 4021, "phone": "84901888484", "status": 0})
        return ReceiptRequest(
            method="POST",
            headers={"content-type": "application/json"},
            query={},
            body=body.encode(),
            received_at=time.time(),
            token=settings.receipt_token.get_secret_value(),
        )

    def forged_receipts(self, settings: Any, delivery_id: uuid.UUID) -> list[ReceiptRequest]:
        genuine = self.valid_receipt(settings, delivery_id)
        return [
            *super().forged_receipts(settings, delivery_id),  # no token at all
            replace(genuine, token=RECEIPT_TOKEN[:-1] + "X"),
            replace(genuine, token=""),
        ]

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [
            {"base_url": "not a url"},
            {"brandname": ""},
            {"receipt_token": "short"},
            {"sms_type": 0},
            {"max_connections": 0},
        ]

    def cause_temporary_failure(self, provider: SpeedSmsSimulator) -> None:
        provider.fail_next_http(status=503, retry_after=3)

    def cause_permanent_failure(self, provider: SpeedSmsSimulator) -> None:
        provider.fail_next(code="105")  # phone number invalid

    def cause_timeout(self, provider: SpeedSmsSimulator) -> None:
        provider.set_latency(LATENCY_S)

    def unreachable_settings(self, provider: SpeedSmsSimulator) -> dict[str, Any]:
        return {
            **self.valid_settings(provider),
            "base_url": f"http://127.0.0.1:{closed_port()}/index.php",
        }

    def no_answer_settings(self, provider: SpeedSmsSimulator, url: str) -> dict[str, Any]:
        return {**self.valid_settings(provider), "base_url": url + "/index.php"}


# -- http_sms: a gateway described by settings, answered by a LocalHttpServer ------------


def _gateway_answer(request: RecordedRequest) -> Reply:
    return Reply(200, {"status": "ok", "code": "0", "id": f"gw-{uuid.uuid4().hex[:12]}"})


def _gateway_auth(request: RecordedRequest) -> Reply | None:
    if request.header("authorization") != HTTP_SMS_BEARER:
        return Reply(401, {"status": "error", "code": "401", "message": "bad credentials"})
    return None


def _signed_receipt(secret: str, document: Any) -> ReceiptRequest:
    body = json.dumps(document).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return ReceiptRequest(
        method="POST",
        headers={"content-type": "application/json", "x-signature": f"sha256={digest}"},
        query={},
        body=body,
        received_at=time.time(),
    )


class TestHttpSmsContract(AdapterContract):
    adapter_class = HttpSmsAdapter
    templates_dir = REPO / "config" / "templates"

    def provider(self) -> LocalHttpServer:
        return LocalHttpServer(default=_gateway_answer, check=_gateway_auth)

    def valid_settings(self, provider: LocalHttpServer) -> dict[str, Any]:
        return {
            "url": provider.url + "/api/sms/send",
            "headers": {"Authorization": HTTP_SMS_BEARER},
            "brandname": BRANDNAME,
            "timeout_s": TIMEOUT_S,
            "success_field": "status",
            "success_value": "ok",
            "message_id_field": "id",
            "code_field": "code",
            "message_field": "message",
            "permanent_codes": ["21"],
            "operator_alert_codes": ["401", "402"],
            "duplicate_codes": ["DUP"],
            "receipt_secret": HTTP_SMS_RECEIPT_SECRET,
        }

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [
            {"url": "ftp://gateway.example.vn/send"},
            {"method": "DELETE"},
            {"success_value": OMIT},  # success_field without the value it must hold
            {"body": {"to": "{phone}", "key": "{secret.api_key}"}},  # no such secret
            {"method": "GET"},  # a JSON body cannot go with GET
            {"headers": {"bad header": "x"}},
            {"receipt_signature_header": "bad header"},
            {"receipt_token": "short"},
        ]

    def cause_temporary_failure(self, provider: LocalHttpServer) -> None:
        provider.fail_next(503, headers={"Retry-After": "5"})

    def cause_permanent_failure(self, provider: LocalHttpServer) -> None:
        provider.reply_next(
            Reply(200, {"status": "error", "code": "21", "message": "Invalid destination"})
        )

    def cause_timeout(self, provider: LocalHttpServer) -> None:
        provider.hang_next(seconds=LATENCY_S)

    def unreachable_settings(self, provider: LocalHttpServer) -> dict[str, Any]:
        return {
            **self.valid_settings(provider),
            "url": f"http://127.0.0.1:{closed_port()}/api/sms/send",
        }

    def no_answer_settings(self, provider: LocalHttpServer, url: str) -> dict[str, Any]:
        return {**self.valid_settings(provider), "url": url + "/api/sms/send"}

    def sent_reference(self, provider: LocalHttpServer) -> str | None:
        request = provider.last_request
        return None if request is None else request.json().get("reference")

    def valid_receipt(self, settings: Any, delivery_id: uuid.UUID) -> ReceiptRequest:
        """The gateway's callback: JSON signed with HMAC-SHA256 over the raw body."""
        secret = settings.receipt_secret.get_secret_value()
        return _signed_receipt(
            secret,
            {"reference": str(delivery_id), "message_id": "gw-1a2b3c", "status": "delivered"},
        )

    def forged_receipts(self, settings: Any, delivery_id: uuid.UUID) -> list[ReceiptRequest]:
        genuine = self.valid_receipt(settings, delivery_id)
        document = json.loads(genuine.body)
        return [
            *super().forged_receipts(settings, delivery_id),  # no signature header
            replace(genuine, body=genuine.body.replace(b"delivered", b"failed")),
            _signed_receipt("a-different-secret-of-some-length", document),
            replace(genuine, headers={**genuine.headers, "x-signature": "sha256=" + "0" * 64}),
        ]
