"""The SpeedSMS adapter against the SpeedSMS simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest
from notifier_simulators.sms import SpeedSmsSimulator
from notifier_sms import SpeedSmsAdapter, SpeedSmsSettings

from notifier.adapter import (
    AdapterContext,
    DeliveryFailure,
    InvalidReceipt,
    MalformedReceipt,
    OutboundMessage,
    PermanentFailure,
    ReceiptRequest,
    SendResult,
    TemporaryFailure,
)

T = TypeVar("T")

BRANDNAME = "DVCQG"
TEXT = "Hồ sơ 000.00.12.H29-231025-0001 cần bổ sung giấy tờ. Vui lòng liên hệ Bộ phận Một cửa."
UNACCENTED = (
    "Ho so 000.00.12.H29-231025-0001 can bo sung giay to. Vui long lien he Bo phan Mot cua."
)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _adapter(sim: SpeedSmsSimulator, context: AdapterContext, **settings: Any) -> SpeedSmsAdapter:
    values: dict[str, Any] = {
        "brandname": BRANDNAME,
        "access_token": sim.access_token,
        "base_url": sim.base_url,
        "timeout_s": 2.0,
    }
    values.update(settings)
    return SpeedSmsAdapter(SpeedSmsSettings.model_validate(values), context)


def _send_one(adapter: SpeedSmsAdapter, message: OutboundMessage) -> SendResult:
    async def send() -> SendResult:
        try:
            return await adapter.send(message)
        finally:
            await adapter.close()

    return _run(send())


async def _send_each(
    adapter: SpeedSmsAdapter, messages: list[OutboundMessage]
) -> list[SendResult | DeliveryFailure]:
    """Send one after the other; each outcome, a result or the failure it raised."""
    outcomes: list[SendResult | DeliveryFailure] = []
    try:
        for message in messages:
            try:
                outcomes.append(await adapter.send(message))
            except DeliveryFailure as failure:
                outcomes.append(failure)
    finally:
        await adapter.close()
    return outcomes


def _failure(adapter: SpeedSmsAdapter, message: OutboundMessage) -> DeliveryFailure:
    with pytest.raises(DeliveryFailure) as caught:
        _send_one(adapter, message)
    return caught.value


def test_request_shape(speedsms, context, make_message) -> None:
    result = _send_one(_adapter(speedsms, context), make_message(TEXT, recipient="0981234567"))

    [request] = speedsms.requests
    assert request.method == "POST"
    assert request.path == "/index.php/sms/send"
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{speedsms.access_token}:x"
    assert request.json() == {
        "to": ["84981234567"],
        "content": UNACCENTED,
        "sms_type": 3,
        "sender": BRANDNAME,
    }
    [sms] = speedsms.messages
    assert result.provider_message_id == sms.provider_id
    assert result.details["segments"] == 1
    assert result.details["encoding"] == "gsm7"
    assert result.details["carrier"] == "viettel"
    # SpeedSMS says what it charged in its answer: the delivery's reported cost.
    assert result.details["charge_vnd"] == str(sms.charge_vnd)
    assert sms.charge_vnd == speedsms.PRICE_PER_SMS


def test_unicode_setting_sends_accents(speedsms, context, make_message) -> None:
    result = _send_one(_adapter(speedsms, context, unicode=True, sms_type=2), make_message(TEXT))
    [sms] = speedsms.messages
    assert sms.content == TEXT
    assert sms.is_unicode is True
    assert sms.sms_type == "2"
    assert result.details["encoding"] == "ucs2"
    assert result.details["segments"] == 2


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("105", "permanent"),
        ("101", "alert"),  # invalid or missing parameters: our request
        ("110", "alert"),
        ("113", "alert"),
        ("300", "alert"),
        ("007", "alert"),
        ("500", "temporary"),
        ("999", "temporary"),
    ],
)
def test_result_codes_map_to_failure_kinds(speedsms, context, make_message, code, kind) -> None:
    speedsms.fail_next(1, code)
    failure = _failure(_adapter(speedsms, context), make_message())
    assert failure.code == code
    if kind == "temporary":
        assert isinstance(failure, TemporaryFailure)
    else:
        assert isinstance(failure, PermanentFailure)
        assert failure.operator_alert is (kind == "alert")
    assert speedsms.messages == []


def test_wrong_token_is_an_operator_alert(speedsms, context, make_message) -> None:
    failure = _failure(_adapter(speedsms, context, access_token="wrong-token"), make_message())
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("http-401", True)
    assert "wrong-token" not in str(failure)


def test_number_refused_by_the_gateway_is_final(speedsms, context, make_message) -> None:
    speedsms.fail_phone("0901888484", "105")
    failure = _failure(_adapter(speedsms, context), make_message(recipient="0901888484"))
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("105", False)
    assert "0901888484" not in str(failure)


def test_outage_is_temporary(speedsms, context, make_message) -> None:
    speedsms.set_outage(True)
    failure = _failure(_adapter(speedsms, context), make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "http-503"
    assert failure.retry_after_s is None


def test_429_is_temporary_with_retry_after(speedsms, context, make_message) -> None:
    speedsms.fail_next_http(1, 429, retry_after=12)
    failure = _failure(_adapter(speedsms, context), make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.retry_after_s == 12.0


def test_over_its_rate_limit_speedsms_answers_429_and_the_adapter_waits_for_its_reset(
    context, make_message
) -> None:
    # SpeedSMS allows a number of requests a minute and then answers 429 with
    # X-Rate-Limit-Reset (seconds): the adapter must wait that long, not guess.
    with SpeedSmsSimulator(access_token="limited-token", rate_limit=2) as limited:
        adapter = _adapter(limited, context)
        outcomes = _run(_send_each(adapter, [make_message() for _ in range(3)]))
    assert [isinstance(o, SendResult) for o in outcomes] == [True, True, False]
    throttled = outcomes[2]
    assert isinstance(throttled, TemporaryFailure)
    assert throttled.code == "http-429"
    assert throttled.retry_after_s == 60.0
    assert limited.rate_limited == 1
    assert len(limited.messages) == 2


def test_a_rate_limit_reset_given_as_a_unix_time_is_read_as_the_time_left(context) -> None:
    adapter = SpeedSmsAdapter(SpeedSmsSettings(brandname=BRANDNAME, access_token="t"), context)
    reset_at = int(time.time()) + 30
    waited = adapter.retry_after(httpx.Response(429, headers={"X-Rate-Limit-Reset": str(reset_at)}))
    assert waited is not None
    assert 25 <= waited <= 30
    assert adapter.retry_after(httpx.Response(429, headers={"Retry-After": "9"})) == 9.0


def test_speedsms_publishes_its_one_request_a_second_limit_as_the_default() -> None:
    # 60 requests a minute (SpeedSMS's API page): notifier stays under it unless the
    # deployment says otherwise.
    limit = SpeedSmsAdapter.default_rate_limit
    assert limit is not None
    assert limit.rate_per_s == 1.0
    assert 1 <= limit.burst <= 60


def test_timeout_is_temporary(speedsms, context, make_message) -> None:
    speedsms.set_latency(1.0)
    failure = _failure(_adapter(speedsms, context, timeout_s=0.2), make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "timeout"
    assert failure.maybe_sent is True  # and SpeedSMS takes no reference to dedupe by


def test_invalid_phone_fails_before_any_request(speedsms, context, make_message) -> None:
    failure = _failure(_adapter(speedsms, context), make_message(recipient="028 3829 1234"))
    assert isinstance(failure, PermanentFailure)
    assert failure.code == "invalid-phone"
    assert speedsms.request_count == 0


def test_too_long_text_is_refused_before_any_request(speedsms, context, make_message) -> None:
    failure = _failure(_adapter(speedsms, context, max_segments=1), make_message("x" * 161))
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("too-long", True)
    assert speedsms.request_count == 0


TOKEN = "speedsms-receipt-token-0123456789"


def test_delivery_status_callbacks_are_read_as_receipts_by_tran_id(
    speedsms, context, make_message, receipt_catcher
) -> None:
    assert SpeedSmsAdapter.accepts_receipts is True
    adapter = _adapter(speedsms, context, receipt_token=TOKEN)
    result = _send_one(adapter, make_message())
    [sms] = speedsms.messages
    url = receipt_catcher.url.replace("/esms", "/speedsms") + "/" + TOKEN
    assert speedsms.send_report(sms, url=url).status_code == 200
    assert speedsms.send_report(sms, status=64, url=url).status_code == 200
    assert speedsms.send_report(sms, status=3, url=url).status_code == 200
    delivered, failed, trying = (
        SpeedSmsAdapter.parse_receipt(adapter.settings, r) for r in receipt_catcher.received
    )
    assert receipt_catcher.paths[0] == "/v1/receipts/speedsms"
    assert [(r.delivered, r.provider_message_id) for r in delivered] == [
        (True, result.provider_message_id)
    ]
    assert [(r.delivered, r.error_code) for r in failed] == [(False, "status=64")]
    assert trying == []  # 1-63: the carrier still tries
    assert delivered[0].nonce != failed[0].nonce
    # Not an incoming SMS.
    assert SpeedSmsAdapter.parse_inbound(adapter.settings, receipt_catcher.received[0]) == []


def test_incoming_sms_callbacks_are_read_as_inbound_messages(speedsms, receipt_catcher) -> None:
    settings = SpeedSmsSettings(brandname=BRANDNAME, access_token="t", receipt_token=TOKEN)  # type: ignore[arg-type]
    url = receipt_catcher.url.replace("/esms", "/speedsms") + "/" + TOKEN
    assert speedsms.send_incoming("84912345678", "STOP", url=url).status_code == 200
    [request] = receipt_catcher.received
    [message] = SpeedSmsAdapter.parse_inbound(settings, request)
    assert (message.sender, message.text) == ("84912345678", "STOP")
    assert SpeedSmsAdapter.parse_receipt(settings, request) == []


def test_speedsms_callbacks_need_the_token() -> None:
    settings = SpeedSmsSettings(brandname=BRANDNAME, access_token="t", receipt_token=TOKEN)  # type: ignore[arg-type]
    body = b'{"type": "report", "tranId": 7, "phone": "84901888484", "status": 0}'
    for token in (None, "", TOKEN[:-1] + "X"):
        request = ReceiptRequest("POST", {}, {}, body, time.time(), token=token)
        with pytest.raises(InvalidReceipt):
            SpeedSmsAdapter.parse_receipt(settings, request)
        with pytest.raises(InvalidReceipt):
            SpeedSmsAdapter.parse_inbound(settings, request)
    unset = SpeedSmsSettings(brandname=BRANDNAME, access_token="t")  # type: ignore[arg-type]
    with pytest.raises(InvalidReceipt):
        SpeedSmsAdapter.parse_receipt(unset, ReceiptRequest("POST", {}, {}, body, 0, token=TOKEN))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"type": "report", "tranId": 7, "status": "delivered"}',
        b'{"type": "report", "tranId": "", "status": 0}',
        b'{"type": "incoming", "content": "STOP"}',
        b'{"type": "something else"}',
    ],
)
def test_unreadable_speedsms_callbacks_are_malformed(body: bytes) -> None:
    settings = SpeedSmsSettings(brandname=BRANDNAME, access_token="t", receipt_token=TOKEN)  # type: ignore[arg-type]
    request = ReceiptRequest("POST", {}, {}, body, time.time(), token=TOKEN)

    def read_as_the_api_does() -> None:  # both readings of one callback (notifier.web.api)
        SpeedSmsAdapter.parse_receipt(settings, request)
        SpeedSmsAdapter.parse_inbound(settings, request)

    with pytest.raises(MalformedReceipt):
        read_as_the_api_does()


def test_health(speedsms, context) -> None:
    async def check(adapter: SpeedSmsAdapter) -> tuple[bool, str]:
        try:
            health = await adapter.health()
            return health.ok, health.detail
        finally:
            await adapter.close()

    assert _run(check(_adapter(speedsms, context))) == (True, f"balance {speedsms.balance}")
    ok, detail = _run(check(_adapter(speedsms, context, access_token="nope")))
    assert ok is False
    assert "401" in detail
