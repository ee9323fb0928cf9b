"""eSMS.vn: customer-care (CSKH) brandname SMS through ``SendMultipleMessage_V4_post_json``.

- One POST per message, JSON; the phone in national form (``0901888484``).
- ``RequestId`` is the delivery id. eSMS refuses a RequestId it saw in the last
  **24 hours** with code 124, which makes a retry after a lost answer safe within that
  window: 124 means the first request was taken, and is reported as sent, not as a
  failure. Later than that a retry may send twice: :attr:`EsmsAdapter.dedupe_window_s`
  says how long the dedupe lasts, for the core's resend policy.
- Result codes (``CodeResult``) map onto the core's failures: see :data:`OPERATOR_CODES`,
  :data:`PERMANENT_CODES`; unknown codes are temporary (retried), conservatively.
  ``{"error": "Invalid request"}`` (no ``CodeResult``) is eSMS refusing the request's
  shape: our malformed request, an operator alert, never the citizen's failure.
- Delivery reports: eSMS calls ``CallbackUrl`` with HTTP GET and query parameters
  (``SMSID``, ``SendStatus``, ``SendSuccess``, ``SendFailed``, ``RequestId``...). They
  carry no signature, so the URL carries our secret as its last path segment:
  ``<callback_url>/<receipt_token>``, which :meth:`EsmsAdapter.parse_receipt` checks
  in constant time. A path segment, because eSMS appends its own query string to the
  URL (the docs' samples show ``https://{{yourportalreceivecallback}}?SMSID=...``):
  a ``?token=`` of ours might not survive that. The older ``?token=`` form is still
  accepted, deprecated.
- A done report (SendStatus 5) carries ``TotalPrice``, what eSMS billed for the
  message: it becomes the delivery's cost (``Receipt.charge_vnd``), replacing our
  estimate from the price table (notifier.costs).
- A report is identified by the message and the state it reports (``SMSID`` or
  ``RequestId``, and ``SendStatus``): the same report again, whatever else it says
  (other counts, parameters we do not read), is a duplicate. A parameter given twice
  makes the report ambiguous: refused (400).

Source: eSMS developer docs (devesms/gitbook_esms_for_develop_v2: esms-api/ham-gui-tin/
tin-nhan-sms-otp-cskh.md, esms-api/callback-url.md, esms-api/bang-ma-loi.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self
from uuid import UUID

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from notifier.adapter import (
    DeliveryFailure,
    Health,
    MalformedReceipt,
    PermanentFailure,
    Receipt,
    ReceiptRequest,
    TemporaryFailure,
    UncertainSendPolicy,
)
from notifier.adapter_http import status_failure
from notifier.costs import parse_vnd
from notifier.phones import PhoneFormat

from .base import (
    GatewayAccepted,
    PreparedSms,
    SmsAdapterBase,
    SmsSettings,
    check_http_url,
    check_receipt_token,
    gateway_text,
    read_json,
)

__all__ = [
    "ACCEPTED",
    "DEDUPE_WINDOW_S",
    "DUPLICATE_REQUEST",
    "INVALID_REQUEST",
    "OPERATOR_CODES",
    "PERMANENT_CODES",
    "EsmsAdapter",
    "EsmsSettings",
    "classify_esms_code",
]

SEND_PATH = "/MainService.svc/json/SendMultipleMessage_V4_post_json/"
BALANCE_PATH = "/MainService.svc/json/GetBalance_json"

ACCEPTED = "100"
# RequestId already used within the last 24 hours: the first request was taken.
DUPLICATE_REQUEST = "124"
# How long eSMS remembers a RequestId (bang-ma-loi.md, code 124): a resend of an
# uncertain send is deduped only inside this window.
DEDUPE_WINDOW_S = 24 * 3600
# Our code for eSMS's ``{"error": "Invalid request"}`` answer, which has no CodeResult.
INVALID_REQUEST = "invalid-request"

# Source of both tables: eSMS's error table, devesms/gitbook_esms_for_develop_v2
# esms-api/bang-ma-loi.md (cited in the package README). Codes in neither table are
# retried (temporary), conservatively.

# Our account or configuration at eSMS: never a retry loop; the core fails over to
# the next gateway of the channel and the operator is alerted.
OPERATOR_CODES: dict[str, str] = {
    "101": "wrong ApiKey/SecretKey",
    "102": "no price list on the eSMS account",
    "103": "eSMS balance too low",
    "104": "brandname not registered or not active at eSMS",
    "118": "message type (SmsType) not supported by the account",
    "140": "our server's IP address is not whitelisted at eSMS",
    "143": "the eSMS account is locked",
    "146": "the text does not match a registered CSKH template",
    "177": "the recipient's carrier is not registered for the brandname",
    "201": "the text holds a keyword eSMS blocks (check the SMS template)",
    "300": "message type (SmsType) missing or not supported",
    INVALID_REQUEST: "eSMS refused the request as malformed (ours: check the adapter settings)",
}
# About this message or recipient: final, no failover.
PERMANENT_CODES: dict[str, str] = {
    "99": "phone number blocked at eSMS",
    "108": "phone number refused as malformed by eSMS",
}

# Delivery-report SendStatus values.
_REJECTED = "4"
_DONE = "5"


class EsmsSettings(SmsSettings):
    """``NOTIFIER_ADAPTERS__ESMS__*``."""

    api_key: SecretStr
    secret_key: SecretStr
    base_url: str = "https://rest.esms.vn"
    sms_type: str = Field(default="2", pattern=r"^\d{1,2}$")  # 2: customer care (CSKH)
    # Sandbox "1": eSMS checks the request but sends and bills nothing.
    sandbox: bool = False
    # Our receipts endpoint, without the token: https://<api>/v1/receipts/esms
    # (the adapter adds /<receipt_token> to what it sends eSMS).
    callback_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = check_http_url(value)
        url = httpx.URL(value)
        if url.query:
            # eSMS appends "?SMSID=..." to the URL: a query of ours would be garbled.
            raise ValueError(
                "must not have a query string (no ?token=): set receipt_token, the "
                "adapter adds it as the last path segment"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _callback_needs_token(self) -> Self:
        if self.callback_url is not None and self.receipt_token is None:
            raise ValueError(
                "callback_url needs receipt_token (eSMS reports are unsigned; the token "
                "in the URL is what proves them)"
            )
        return self


def classify_esms_code(code: str, error_message: Any = None) -> DeliveryFailure:
    """The failure for an eSMS ``CodeResult`` other than 100 and 124."""
    said = gateway_text(error_message)
    suffix = f" ({said})" if said else ""
    if code in OPERATOR_CODES:
        return PermanentFailure(
            f"eSMS: {OPERATOR_CODES[code]}{suffix}", code=code, operator_alert=True
        )
    if code in PERMANENT_CODES:
        return PermanentFailure(f"eSMS: {PERMANENT_CODES[code]}{suffix}", code=code)
    return TemporaryFailure(f"eSMS answered code {code}{suffix}", code=code)


class EsmsAdapter(SmsAdapterBase[EsmsSettings]):
    """SMS through eSMS.vn (brandname, customer-care type), with delivery reports."""

    name: ClassVar[str] = "esms"
    description: ClassVar[str] = (
        "eSMS.vn brandname SMS (CSKH): idempotent by RequestId, delivery reports by callback"
    )
    settings_model = EsmsSettings
    gateway_label: ClassVar[str] = "eSMS"
    accepts_receipts: ClassVar[bool] = True
    # eSMS dedupes by RequestId (our delivery id) for 24 hours only: a resend of a send
    # that may have been taken is safe inside this window, may send twice after it.
    dedupe_window_s: ClassVar[float] = DEDUPE_WINDOW_S
    # An uncertain send (the worker died during the call, a read timeout) is sent again
    # inside that window (eSMS answers 124 to the repeat) and held after it.
    uncertain_send_policy: ClassVar[UncertainSendPolicy] = UncertainSendPolicy.RESEND

    def base_url(self) -> str:
        return self.settings.base_url

    def callback_url(self) -> str | None:
        """The CallbackUrl sent with each message: our endpoint plus ``/<token>``."""
        settings = self.settings
        if settings.callback_url is None or settings.receipt_token is None:
            return None
        return f"{settings.callback_url}/{settings.receipt_token.get_secret_value()}"

    async def submit(self, client: httpx.AsyncClient, sms: PreparedSms) -> GatewayAccepted:
        settings = self.settings
        body: dict[str, str] = {
            "ApiKey": settings.api_key.get_secret_value(),
            "SecretKey": settings.secret_key.get_secret_value(),
            "Phone": sms.phone.format(PhoneFormat.NATIONAL),
            "Content": sms.text,
            "Brandname": settings.brandname,
            "SmsType": settings.sms_type,
            "IsUnicode": "1" if sms.ucs2 else "0",
            "Sandbox": "1" if settings.sandbox else "0",
            "RequestId": sms.reference,
        }
        callback = self.callback_url()
        if callback is not None:
            body["CallbackUrl"] = callback
        response = await self.request(client, "POST", SEND_PATH, json=body)
        document = read_json(response)
        if not isinstance(document, dict):
            raise status_failure(response, "eSMS")
        if "CodeResult" not in document:
            if "error" in document:  # {"error": "Invalid request"}: our request's shape
                raise classify_esms_code(INVALID_REQUEST, document.get("error"))
            raise status_failure(response, "eSMS")
        code = str(document["CodeResult"]).strip()
        sms_id = document.get("SMSID")
        provider_id = str(sms_id) if sms_id not in (None, "") else None
        details: dict[str, Any] = {"sandbox": True} if settings.sandbox else {}
        if code == ACCEPTED:
            return GatewayAccepted(provider_id, details)
        if code == DUPLICATE_REQUEST:
            # Sent before with this RequestId (a retry after a lost answer): taken.
            details["duplicate"] = True
            return GatewayAccepted(provider_id, details)
        raise classify_esms_code(code, document.get("ErrorMessage"))

    async def health(self) -> Health:
        """GetBalance_json: proves eSMS answers and takes our keys; shows the balance."""
        settings = self.settings
        body = {
            "ApiKey": settings.api_key.get_secret_value(),
            "SecretKey": settings.secret_key.get_secret_value(),
        }
        try:
            response = await self.request(self._get_client(), "POST", BALANCE_PATH, json=body)
        except TemporaryFailure as exc:
            return Health(ok=False, detail=str(exc))
        document = read_json(response)
        if not isinstance(document, dict):
            return Health(ok=False, detail=str(status_failure(response, "eSMS")))
        code = str(document.get("CodeResponse", "")).strip()
        if code != ACCEPTED:
            return Health(ok=False, detail=str(classify_esms_code(code or "?")))
        return Health(ok=True, detail=f"balance {gateway_text(document.get('Balance'), 30)}")

    @classmethod
    def parse_receipt(cls, settings: EsmsSettings, request: ReceiptRequest) -> list[Receipt]:
        """eSMS's delivery report (a GET with query parameters) as at most one receipt.

        SendStatus 5 with SendSuccess ≥ 1: delivered; 4 (rejected), or 5 with only
        failures: not delivered; 1, 2, 7 (waiting, sending, waiting for the report):
        nothing yet.
        """
        check_receipt_token(settings, request)
        query = request.query
        status = (query.get("SendStatus") or "").strip()
        if not status.isdigit():
            raise MalformedReceipt("SendStatus missing or not a number")
        success = _count(query, "SendSuccess")
        failed = _count(query, "SendFailed")
        delivery_id = _uuid(query.get("RequestId"))
        sms_id = (query.get("SMSID") or "").strip() or None
        if delivery_id is None and sms_id is None:
            raise MalformedReceipt("neither RequestId nor SMSID")
        # eSMS signs nothing, so a report is known by what it is about: this message
        # (both ids, as given) in this state. eSMS reports each state once; the same
        # message and state again is a retry or a replay, whatever its counts say.
        nonce = f"esms:{sms_id or ''}:{delivery_id or ''}:{status}"
        # What eSMS billed for the message (all its segments), once it is done.
        charge = parse_vnd(query.get("TotalPrice")) if status == _DONE else None
        if status == _DONE and success >= 1:
            return [
                Receipt(
                    delivered=True,
                    delivery_id=delivery_id,
                    provider_message_id=sms_id,
                    nonce=nonce,
                    charge_vnd=charge,
                )
            ]
        if status == _REJECTED or (status == _DONE and failed >= 1):
            reason = (
                "rejected by eSMS" if status == _REJECTED else "carrier reported it undelivered"
            )
            return [
                Receipt(
                    delivered=False,
                    delivery_id=delivery_id,
                    provider_message_id=sms_id,
                    error=reason,
                    error_code=f"SendStatus={status}",
                    nonce=nonce,
                    charge_vnd=charge,
                )
            ]
        return []  # in progress (1, 2, 7), or done without counts: wait for the next one


def _count(query: Mapping[str, str], name: str) -> int:
    value = (query.get(name) or "0").strip()
    if not value.isdigit():
        raise MalformedReceipt(f"{name} is not a number")
    return int(value)


def _uuid(value: str | None) -> UUID | None:
    if not value or not value.strip():
        return None
    try:
        return UUID(value.strip())
    except ValueError:
        return None  # not one of ours: match by SMSID
