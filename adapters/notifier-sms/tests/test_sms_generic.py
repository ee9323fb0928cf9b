"""The configurable HTTP gateway, set up by settings alone to speak the eSMS and
SpeedSMS APIs of the simulators (real HTTP), plus its signed receipts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from notifier_simulators.sms import EsmsSimulator, SpeedSmsSimulator
from notifier_sms import HttpSmsAdapter, HttpSmsSettings
from pydantic import ValidationError

from notifier.adapter import (
    AdapterContext,
    DeliveryFailure,
    InvalidReceipt,
    OutboundMessage,
    PermanentFailure,
    ReceiptRequest,
    SendResult,
    TemporaryFailure,
)

T = TypeVar("T")

BRANDNAME = "DVCQG"
SECRET = "receipt-hmac-secret"


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _esms_dialect(sim: EsmsSimulator, **extra: Any) -> dict[str, Any]:
    """eSMS's API described as http_sms settings (as a province would write them)."""
    settings: dict[str, Any] = {
        "brandname": BRANDNAME,
        "url": sim.base_url + "/MainService.svc/json/SendMultipleMessage_V4_post_json/",
        "phone_format": "national",
        "secrets": {"api_key": sim.api_key, "secret_key": sim.secret_key},
        "body": {
            "ApiKey": "{secret.api_key}",
            "SecretKey": "{secret.secret_key}",
            "Phone": "{phone}",
            "Content": "{text}",
            "Brandname": "{brandname}",
            "SmsType": "2",
            "IsUnicode": "{unicode}",
            "RequestId": "{reference}",
        },
        "success_field": "CodeResult",
        "success_value": "100",
        "message_id_field": "SMSID",
        "code_field": "CodeResult",
        "message_field": "ErrorMessage",
        "permanent_codes": ["99", "108"],
        "operator_alert_codes": ["101", "102", "103", "104", "140", "146", "177"],
        "duplicate_codes": ["124"],
        "timeout_s": 2.0,
    }
    settings.update(extra)
    return settings


def _speedsms_dialect(sim: SpeedSmsSimulator, **extra: Any) -> dict[str, Any]:
    basic = base64.b64encode(f"{sim.access_token}:x".encode()).decode()
    settings: dict[str, Any] = {
        "brandname": BRANDNAME,
        "url": sim.base_url + "/sms/send",
        "headers": {"Authorization": f"Basic {basic}"},
        "body": {"to": ["{phone}"], "content": "{text}", "sms_type": 3, "sender": "{brandname}"},
        "success_field": "status",
        "success_value": "success",
        "message_id_field": "data.tranId",
        "code_field": "code",
        "message_field": "message",
        "permanent_codes": ["105"],
        "operator_alert_codes": ["300"],
        "timeout_s": 2.0,
    }
    settings.update(extra)
    return settings


def _adapter(settings: dict[str, Any], context: AdapterContext) -> HttpSmsAdapter:
    return HttpSmsAdapter(HttpSmsSettings.model_validate(settings), context)


def _send_one(adapter: HttpSmsAdapter, message: OutboundMessage) -> SendResult:
    async def send() -> SendResult:
        try:
            return await adapter.send(message)
        finally:
            await adapter.close()

    return _run(send())


def _failure(adapter: HttpSmsAdapter, message: OutboundMessage) -> DeliveryFailure:
    with pytest.raises(DeliveryFailure) as caught:
        _send_one(adapter, message)
    return caught.value


# -- sending ----------------------------------------------------------------------------------


def test_speaks_esms_from_settings(esms, context, make_message) -> None:
    message = make_message("Hồ sơ đã được tiếp nhận.", recipient="84901888484")
    result = _send_one(_adapter(_esms_dialect(esms), context), message)
    [sms] = esms.messages
    assert sms.phone == "0901888484"
    assert sms.content == "Ho so da duoc tiep nhan."
    assert sms.request_id == str(message.delivery_id)
    assert sms.brandname == BRANDNAME
    assert sms.is_unicode is False
    assert result.provider_message_id == sms.provider_id
    assert result.details["segments"] == 1


def test_unicode_placeholder(esms, context, make_message) -> None:
    _send_one(_adapter(_esms_dialect(esms, unicode=True), context), make_message("Hồ sơ"))
    assert esms.messages[0].is_unicode is True
    assert esms.messages[0].content == "Hồ sơ"


def test_code_lists_decide_the_failure_kind(esms, context, make_message) -> None:
    esms.fail_next(1, "103")
    esms.fail_next(1, "99")
    esms.fail_next(1, "555")
    settings = _esms_dialect(esms)
    alert = _failure(_adapter(settings, context), make_message())
    permanent = _failure(_adapter(settings, context), make_message())
    temporary = _failure(_adapter(settings, context), make_message())
    assert isinstance(alert, PermanentFailure)
    assert (alert.code, alert.operator_alert) == ("103", True)
    assert isinstance(permanent, PermanentFailure)
    assert (permanent.code, permanent.operator_alert) == ("99", False)
    assert isinstance(temporary, TemporaryFailure)
    assert temporary.code == "555"


def test_duplicate_codes_count_as_sent(esms, context, make_message) -> None:
    message = make_message()
    _send_one(_adapter(_esms_dialect(esms), context), message)
    again = _send_one(_adapter(_esms_dialect(esms), context), message)
    assert again.details["duplicate"] is True
    assert len(esms.messages) == 1


def test_speaks_speedsms_with_secret_headers(speedsms, context, make_message) -> None:
    result = _send_one(_adapter(_speedsms_dialect(speedsms), context), make_message())
    [request] = speedsms.requests
    body = request.json()
    assert body["to"] == ["84901888484"]  # international by default
    assert body["sms_type"] == 3  # non-string template values are kept as they are
    assert result.provider_message_id == speedsms.messages[0].provider_id


def test_wrong_auth_header_is_an_operator_alert(speedsms, context, make_message) -> None:
    settings = _speedsms_dialect(speedsms, headers={"Authorization": "Basic d3Jvbmc6eA=="})
    failure = _failure(_adapter(settings, context), make_message())
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("http-401", True)


def test_without_a_success_rule_any_2xx_is_success(speedsms, context, make_message) -> None:
    settings = _speedsms_dialect(speedsms, success_field=None, success_value=None)
    result = _send_one(_adapter(settings, context), make_message())
    assert result.provider_message_id == speedsms.messages[0].provider_id


def test_http_errors_are_shared_with_the_other_gateways(speedsms, context, make_message) -> None:
    speedsms.fail_next_http(1, 429, retry_after=3)
    speedsms.fail_next_http(1, 502)
    settings = _speedsms_dialect(speedsms)
    throttled = _failure(_adapter(settings, context), make_message())
    broken = _failure(_adapter(settings, context), make_message())
    assert isinstance(throttled, TemporaryFailure)
    assert throttled.retry_after_s == 3.0
    assert isinstance(broken, TemporaryFailure)
    assert broken.code == "http-502"


def test_invalid_phone_fails_before_any_request(speedsms, context, make_message) -> None:
    failure = _failure(
        _adapter(_speedsms_dialect(speedsms), context), make_message(recipient="+1 202 555 0143")
    )
    assert isinstance(failure, PermanentFailure)
    assert failure.code == "invalid-phone"
    assert speedsms.request_count == 0


# -- settings ------------------------------------------------------------------------------------


def test_settings_take_json_text_from_environment_variables() -> None:
    settings = HttpSmsSettings.model_validate(
        {
            "url": "https://sms.example.gov.vn/api/send",
            "headers": '{"Authorization": "Bearer abc"}',
            "permanent_codes": '["1", "2"]',
            "body": '{"msisdn": "{phone}", "message": "{text}"}',
        }
    )
    assert settings.headers["Authorization"].get_secret_value() == "Bearer abc"
    assert settings.permanent_codes == ["1", "2"]
    assert settings.body == {"msisdn": "{phone}", "message": "{text}"}
    assert "Bearer abc" not in repr(settings)


@pytest.mark.parametrize(
    "extra",
    [
        {"body": {"password": "{secret.missing}"}},  # placeholder without its secret
        {"success_field": "status"},  # without success_value
        {"method": "GET"},  # GET with a JSON body
        {"body_encoding": "form", "body": {"to": ["{phone}"]}},  # nested in a form
        {"url": "not a url"},
        {"headers": {"Bad Header": "x"}},
        {"brandname": "TWELVECHARSX"},
    ],
)
def test_inconsistent_settings_are_refused(extra) -> None:
    values: dict[str, Any] = {"url": "https://sms.example.gov.vn/api/send"}
    values.update(extra)
    with pytest.raises(ValidationError):
        HttpSmsSettings.model_validate(values)


# -- receipts -------------------------------------------------------------------------------------


def _signed(body: bytes, secret: str = SECRET, prefix: str = "") -> ReceiptRequest:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return ReceiptRequest(
        method="POST",
        headers={"x-signature": prefix + signature, "content-type": "application/json"},
        query={},
        body=body,
        received_at=time.time(),
    )


def _receipt_settings(**extra: Any) -> HttpSmsSettings:
    values: dict[str, Any] = {
        "url": "https://sms.example.gov.vn/api/send",
        "receipt_secret": SECRET,
    }
    values.update(extra)
    return HttpSmsSettings.model_validate(values)


def test_signed_receipts() -> None:
    delivered, failed = uuid.uuid4(), uuid.uuid4()
    body = json.dumps(
        [
            {"reference": str(delivered), "message_id": "m1", "status": "DELIVERED"},
            {"reference": str(failed), "status": "failed", "error": "absent subscriber"},
            {"reference": str(uuid.uuid4()), "status": "sending"},  # in progress: skipped
            {"message_id": "m4", "status": "delivered"},  # not ours by reference
        ]
    ).encode()
    receipts = HttpSmsAdapter.parse_receipt(_receipt_settings(), _signed(body, prefix="sha256="))
    assert [(r.delivered, r.delivery_id, r.provider_message_id) for r in receipts] == [
        (True, delivered, "m1"),
        (False, failed, None),
        (True, None, "m4"),
    ]
    assert receipts[1].error == "absent subscriber"


GOOD_BODY = json.dumps({"reference": str(uuid.uuid4()), "status": "delivered"}).encode()


def _tampered() -> ReceiptRequest:
    signed = _signed(GOOD_BODY)
    return ReceiptRequest(
        signed.method, signed.headers, {}, GOOD_BODY.replace(b"}", b" }"), time.time()
    )


def test_a_good_body_is_accepted_when_signed() -> None:
    # The refusals below differ from this only in what they name.
    assert len(HttpSmsAdapter.parse_receipt(_receipt_settings(), _signed(GOOD_BODY))) == 1


@pytest.mark.parametrize(
    "request_",
    [
        _signed(GOOD_BODY, secret="another-secret"),  # signed with another key
        ReceiptRequest("POST", {}, {}, GOOD_BODY, time.time()),  # unsigned
        _tampered(),  # body changed after signing
        _signed(b""),  # nothing signed
        _signed(b"not json"),
        _signed(b'{"status": "delivered"}'),  # names no message
    ],
    ids=["other-key", "unsigned", "tampered", "empty", "not-json", "no-reference"],
)
def test_bad_receipts_are_refused(request_) -> None:
    with pytest.raises(InvalidReceipt):
        HttpSmsAdapter.parse_receipt(_receipt_settings(), request_)


def test_token_receipts_from_a_query_string() -> None:
    token = "generic-token-0123456789"
    settings = _receipt_settings(receipt_secret=None, receipt_token=token)
    delivery_id = uuid.uuid4()
    query = {"token": token, "reference": str(delivery_id), "status": "delivered"}
    request = ReceiptRequest("GET", {}, query, b"", time.time())
    [receipt] = HttpSmsAdapter.parse_receipt(settings, request)
    assert (receipt.delivered, receipt.delivery_id) == (True, delivery_id)
    with pytest.raises(InvalidReceipt):
        HttpSmsAdapter.parse_receipt(
            settings, ReceiptRequest("GET", {}, {**query, "token": "x"}, b"", time.time())
        )


def test_receipts_are_refused_when_not_configured() -> None:
    settings = _receipt_settings(receipt_secret=None)
    with pytest.raises(InvalidReceipt):
        HttpSmsAdapter.parse_receipt(settings, _signed(b'{"status": "delivered"}'))
