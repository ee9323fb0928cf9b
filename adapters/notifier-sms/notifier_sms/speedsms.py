"""SpeedSMS (speedsms.vn): ``POST /sms/send`` with HTTP Basic auth (access token as the
user name, password ``x``), JSON ``{"to": ["84..."], "content", "sms_type", "sender"}``.

Answers: ``{"status": "success", "code": "00", "data": {"tranId": ..., "totalSMS": ...,
"totalPrice": ..., "invalidPhone": []}}`` or ``{"status": "error", "code": "...",
"message": "...", "invalidPhone": [...]}``.

Callbacks (set one URL in SpeedSMS's dashboard:
``https://<api>/v1/receipts/speedsms/<receipt_token>``): SpeedSMS POSTs JSON, a
delivery status ``{"type": "report", "tranId", "phone", "status"}`` (``status`` 0:
delivered; 1 to 63: not yet, the carrier still tries; 64 and above: failed) or an
incoming SMS ``{"type": "incoming", "phone", "content"}``. A report is matched by
``tranId``, the provider message id we recorded (one number per request, so one
delivery per tranId); an incoming STOP opts the number out of SMS. SpeedSMS signs
neither, so the token in the path is the proof. **Unverified**: these shapes come from
public clients (alexzvn/speedsms-api, src/Callback/Status.php and Incoming.php; the
``type`` values and the status ranges from a public C# integration), not from
SpeedSMS's API page; see the README.

Limits of this gateway, as far as its public API goes:

- **No idempotency key**: SpeedSMS takes no reference of ours, so a retry after a lost
  answer (a read timeout) may send the SMS twice. Put SpeedSMS after eSMS in the
  failover order when that matters.
- **60 requests a minute**: over it SpeedSMS answers HTTP 429 with
  ``X-Rate-Limit-Reset`` (seconds to wait), which :meth:`SpeedSmsAdapter.retry_after`
  reads; :attr:`SpeedSmsAdapter.default_rate_limit` keeps notifier under the limit.

Source: SpeedSMS's API page (speedsms.vn/sms-api, "Rate limit" and "Error Codes").
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator

from notifier.adapter import (
    DeliveryFailure,
    Health,
    InboundMessage,
    MalformedReceipt,
    PermanentFailure,
    RateLimit,
    Receipt,
    ReceiptRequest,
    TemporaryFailure,
)
from notifier.adapter_http import parse_retry_after, retry_after, status_failure
from notifier.costs import CHARGE_VND, parse_vnd
from notifier.phones import PhoneFormat

from .base import (
    GatewayAccepted,
    PreparedSms,
    SmsAdapterBase,
    SmsSettings,
    check_http_url,
    check_receipt_token,
    gateway_text,
    json_path,
    read_json,
)

__all__ = [
    "OPERATOR_CODES",
    "PERMANENT_CODES",
    "SpeedSmsAdapter",
    "SpeedSmsSettings",
    "classify_speedsms_code",
]

SEND_PATH = "/sms/send"
# Callback types and delivery statuses (unverified: see the module's text).
REPORT_TYPE = "report"
INCOMING_TYPE = "incoming"
DELIVERED_STATUS = 0
FAILED_FROM_STATUS = 64
USER_INFO_PATH = "/user/info"
SUCCESS = "00"
# Sent with a 429: seconds until the request allowance is back (the docs say to read it).
RATE_LIMIT_RESET_HEADER = "X-Rate-Limit-Reset"
# A reset value this large is a Unix time rather than a number of seconds.
_EPOCH_THRESHOLD = 1_000_000_000

# Source of both tables: SpeedSMS's API page, "Error Codes" (en.speedsms.vn/sms-api-service-2,
# cited in the package README). Codes in neither table (500 "internal error, please try
# again", unknown ones) are retried (temporary).
PERMANENT_CODES: dict[str, str] = {
    "105": "invalid phone number",
}
# Our request (parameters), template (encoding, length) or account (balance, access):
# the operator must act; the core fails over to the next gateway meanwhile.
OPERATOR_CODES: dict[str, str] = {
    "101": "invalid or missing parameters (our request: check the adapter settings)",
    "110": "content encoding not supported (check the template and the unicode setting)",
    "113": "content too long (shorten the SMS template)",
    "300": "SpeedSMS balance too low",
    "007": "access refused (IP locked or token not allowed)",
    "008": "SpeedSMS account locked",
    "009": "SpeedSMS account not allowed to use the API",
}


class SpeedSmsSettings(SmsSettings):
    """``NOTIFIER_ADAPTERS__SPEEDSMS__*``."""

    access_token: SecretStr
    base_url: str = "https://api.speedsms.vn/index.php"
    # 2: random customer-care number, 3: our brandname, 4: SpeedSMS's default
    # brandname (Notify/Verify), 5: Android gateway app.
    sms_type: int = Field(default=3, ge=1, le=8)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_http_url(value)


def classify_speedsms_code(code: str, message: Any = None) -> DeliveryFailure:
    said = gateway_text(message)
    suffix = f" ({said})" if said else ""
    if code in OPERATOR_CODES:
        return PermanentFailure(
            f"SpeedSMS: {OPERATOR_CODES[code]}{suffix}", code=code, operator_alert=True
        )
    if code in PERMANENT_CODES:
        return PermanentFailure(f"SpeedSMS: {PERMANENT_CODES[code]}{suffix}", code=code)
    return TemporaryFailure(f"SpeedSMS answered code {code}{suffix}", code=code)


class SpeedSmsAdapter(SmsAdapterBase[SpeedSmsSettings]):
    """SMS through SpeedSMS, with delivery-status and incoming-SMS callbacks (token in
    the URL path). No idempotency key: a retry after a lost answer may duplicate."""

    name: ClassVar[str] = "speedsms"
    description: ClassVar[str] = (
        "SpeedSMS brandname SMS: delivery reports and STOP replies by callback"
    )
    settings_model = SpeedSmsSettings
    gateway_label: ClassVar[str] = "SpeedSMS"
    accepts_receipts: ClassVar[bool] = True
    accepts_inbound: ClassVar[bool] = True
    # SpeedSMS allows 60 requests in 60 seconds per account. Its 429 answer is that of
    # a refilling allowance (one request a second back, up to 60 saved up); the burst is
    # kept at 10 because each worker process has its own (see docs/reliability.md).
    default_rate_limit: ClassVar[RateLimit | None] = RateLimit(rate_per_s=1.0, burst=10)

    def retry_after(self, response: httpx.Response) -> float | None:
        """``X-Rate-Limit-Reset`` on a 429 (seconds; a Unix time is accepted too), else
        the standard ``Retry-After``."""
        value = response.headers.get(RATE_LIMIT_RESET_HEADER, "").strip()
        if value:
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and number >= _EPOCH_THRESHOLD:
                return parse_retry_after(str(number - time.time()))
            seconds = parse_retry_after(value)
            if seconds is not None:
                return seconds
        return retry_after(response)

    @classmethod
    def parse_receipt(cls, settings: SpeedSmsSettings, request: ReceiptRequest) -> list[Receipt]:
        """A delivery-status callback as at most one receipt (none for an incoming SMS,
        or a status that is not final yet)."""
        document = _callback(settings, request)
        if _type(document) == INCOMING_TYPE or "tranId" not in document:
            return []
        tran_id = _text(document.get("tranId"))
        status = document.get("status")
        if isinstance(status, str) and status.strip().lstrip("-").isdigit():
            status = int(status)
        if not tran_id or isinstance(status, bool) or not isinstance(status, int):
            raise MalformedReceipt("a report needs tranId and a numeric status")
        # No signature: the report is known by the message and the state it reports.
        nonce = f"speedsms:{tran_id}:{status}"
        if status == DELIVERED_STATUS:
            return [Receipt(delivered=True, provider_message_id=tran_id, nonce=nonce)]
        if status >= FAILED_FROM_STATUS:
            return [
                Receipt(
                    delivered=False,
                    provider_message_id=tran_id,
                    error="SpeedSMS reported it undelivered",
                    error_code=f"status={status}",
                    nonce=nonce,
                )
            ]
        return []  # 1-63: the carrier is still trying; the final report follows

    @classmethod
    def parse_inbound(
        cls, settings: SpeedSmsSettings, request: ReceiptRequest
    ) -> list[InboundMessage]:
        """An incoming-SMS callback as one message (none for a delivery report)."""
        document = _callback(settings, request)
        if _type(document) != INCOMING_TYPE and "tranId" in document:
            return []
        if _type(document) != INCOMING_TYPE:
            raise MalformedReceipt("neither a delivery report nor an incoming SMS")
        phone, content = _text(document.get("phone")), _text(document.get("content"))
        if not phone:
            raise MalformedReceipt("an incoming SMS needs the sender's phone")
        return [InboundMessage(sender=phone, text=content)]

    def base_url(self) -> str:
        return self.settings.base_url

    def client_options(self) -> dict[str, Any]:
        return {"auth": httpx.BasicAuth(self.settings.access_token.get_secret_value(), "x")}

    async def submit(self, client: httpx.AsyncClient, sms: PreparedSms) -> GatewayAccepted:
        body = {
            "to": [sms.phone.format(PhoneFormat.INTERNATIONAL)],
            "content": sms.text,
            "sms_type": self.settings.sms_type,
            "sender": self.settings.brandname,
        }
        response = await self.request(client, "POST", SEND_PATH, json=body)
        if response.status_code in (401, 403):
            raise status_failure(response, "SpeedSMS")
        document = read_json(response)
        if not isinstance(document, dict) or "status" not in document:
            raise status_failure(response, "SpeedSMS")
        code = str(document.get("code", "")).strip()
        if document["status"] != "success":
            raise classify_speedsms_code(code or "?", document.get("message"))
        invalid = json_path(document, "data.invalidPhone") or document.get("invalidPhone")
        if invalid:  # taken as a request, but our only number was refused
            raise classify_speedsms_code("105")
        tran_id = json_path(document, "data.tranId")
        details: dict[str, Any] = {}
        total = json_path(document, "data.totalSMS")
        if isinstance(total, int):
            details["gateway_sms_count"] = total
        # What SpeedSMS billed for the request (our one number): the delivery's cost.
        price = json_path(document, "data.totalPrice")
        charge = parse_vnd(str(price)) if isinstance(price, int | float | str) else None
        if charge is not None:
            details[CHARGE_VND] = str(charge)
        return GatewayAccepted(None if tran_id is None else str(tran_id), details)

    async def health(self) -> Health:
        """GET /user/info: proves SpeedSMS answers and takes our token; shows the balance."""
        try:
            response = await self.request(self._get_client(), "GET", USER_INFO_PATH)
        except TemporaryFailure as exc:
            return Health(ok=False, detail=str(exc))
        document = read_json(response)
        if (
            response.status_code != 200
            or not isinstance(document, dict)
            or document.get("status") != "success"
        ):
            code = str(document.get("code", "")) if isinstance(document, dict) else ""
            failure = (
                classify_speedsms_code(code)
                if code and response.status_code == 200
                else status_failure(response, "SpeedSMS")
            )
            return Health(ok=False, detail=str(failure))
        balance = gateway_text(json_path(document, "data.balance"), 30)
        return Health(ok=True, detail=f"balance {balance}")


def _callback(settings: SpeedSmsSettings, request: ReceiptRequest) -> dict[str, Any]:
    """The token checked, the JSON object of a SpeedSMS callback."""
    check_receipt_token(settings, request)
    if request.method.upper() != "POST":
        raise MalformedReceipt("SpeedSMS callbacks are POSTed JSON")
    try:
        document = json.loads(request.body)
    except ValueError:
        raise MalformedReceipt("body is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedReceipt("body is not a JSON object")
    return document


def _type(document: dict[str, Any]) -> str:
    return _text(document.get("type")).lower()


def _text(value: Any) -> str:
    if value is None or isinstance(value, dict | list | bool):
        return ""
    return str(value).strip()
