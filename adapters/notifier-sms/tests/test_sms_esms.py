"""The eSMS adapter against the eSMS simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from decimal import Decimal
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pytest
from notifier_simulators.sms import EsmsSimulator
from notifier_sms import (
    EsmsAdapter,
    EsmsSettings,
    HttpSmsAdapter,
    SpeedSmsAdapter,
)
from pydantic import ValidationError

from notifier.adapter import (
    AdapterContext,
    DeliveryFailure,
    InvalidReceipt,
    MalformedReceipt,
    OutboundMessage,
    PermanentFailure,
    ReceiptRequest,
    RecipientKind,
    SendResult,
    TemporaryFailure,
)
from notifier.plugins.registry import Registry
from notifier.settings import Settings

T = TypeVar("T")

BRANDNAME = "DVCQG"  # registered in the simulator fixture (conftest)
TOKEN = "rcpt-token-0123456789abcdef"
TEXT = "Hồ sơ 000.00.12.H29-231025-0001 đã được tiếp nhận. Ngày hẹn trả: 27/10/2025."
UNACCENTED = "Ho so 000.00.12.H29-231025-0001 da duoc tiep nhan. Ngay hen tra: 27/10/2025."


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _adapter(sim: EsmsSimulator, context: AdapterContext, **settings: Any) -> EsmsAdapter:
    values: dict[str, Any] = {
        "brandname": BRANDNAME,
        "api_key": sim.api_key,
        "secret_key": sim.secret_key,
        "base_url": sim.base_url,
        "timeout_s": 2.0,
    }
    values.update(settings)
    return EsmsAdapter(EsmsSettings.model_validate(values), context)


async def _send(adapter: EsmsAdapter, *messages: OutboundMessage) -> list[SendResult]:
    try:
        return [await adapter.send(message) for message in messages]
    finally:
        await adapter.close()


def _send_one(adapter: EsmsAdapter, message: OutboundMessage) -> SendResult:
    return _run(_send(adapter, message))[0]


def _failure(adapter: EsmsAdapter, message: OutboundMessage) -> DeliveryFailure:
    with pytest.raises(DeliveryFailure) as caught:
        _send_one(adapter, message)
    return caught.value


# -- the request ----------------------------------------------------------------------


def test_declares_an_sms_adapter_taking_receipts() -> None:
    assert EsmsAdapter.name == "esms"
    assert EsmsAdapter.channel == "sms"
    assert EsmsAdapter.recipient_kind is RecipientKind.PHONE
    assert [part.name for part in EsmsAdapter.template_parts] == ["text"]
    assert EsmsAdapter.accepts_receipts is True
    assert EsmsAdapter.settings_model is EsmsSettings


def test_request_shape_unaccented_by_default(esms, context, make_message) -> None:
    message = make_message(TEXT, recipient="+84 90 188 8484")
    result = _send_one(_adapter(esms, context), message)

    [sms] = esms.messages
    assert sms.phone == "0901888484"  # national form, as eSMS documents it
    assert sms.content == UNACCENTED
    assert sms.brandname == BRANDNAME
    assert sms.request_id == str(message.delivery_id)
    assert sms.is_unicode is False
    [request] = esms.requests
    assert request.path == "/MainService.svc/json/SendMultipleMessage_V4_post_json/"
    body = request.json()
    assert body["ApiKey"] == esms.api_key
    assert body["SecretKey"] == esms.secret_key
    assert body["SmsType"] == "2"
    assert body["IsUnicode"] == "0"
    assert body["Sandbox"] == "0"
    assert "CallbackUrl" not in body
    assert result.provider_message_id == sms.provider_id
    assert result.delivered is False
    assert result.details == {"segments": 1, "encoding": "gsm7", "carrier": "mobifone"}


def test_unicode_setting_sends_accents_as_ucs2(esms, context, make_message) -> None:
    result = _send_one(_adapter(esms, context, unicode=True), make_message(TEXT))
    [sms] = esms.messages
    assert sms.content == TEXT
    assert sms.is_unicode is True
    assert esms.requests[0].json()["IsUnicode"] == "1"
    assert result.details["encoding"] == "ucs2"
    assert result.details["segments"] == 2  # 77 characters > 70


def test_unicode_setting_keeps_plain_text_in_gsm7(esms, context, make_message) -> None:
    result = _send_one(_adapter(esms, context, unicode=True), make_message("Ho so X da xong."))
    assert esms.messages[0].is_unicode is False
    assert result.details["encoding"] == "gsm7"


def test_typography_and_symbols_stay_gsm7_when_unaccented(esms, context, make_message) -> None:
    text = "“Hồ sơ” – đã xong… 👍 Đ"
    result = _send_one(_adapter(esms, context), make_message(text))
    assert esms.messages[0].content == '"Ho so" - da xong... ? D'
    assert result.details["encoding"] == "gsm7"


def test_sandbox_flag(esms, context, make_message) -> None:
    result = _send_one(_adapter(esms, context, sandbox=True), make_message())
    assert esms.requests[0].json()["Sandbox"] == "1"
    assert esms.messages[0].sandbox is True
    assert result.details["sandbox"] is True


def test_callback_url_carries_the_receipt_token_as_its_last_path_segment(
    esms, context, make_message
) -> None:
    adapter = _adapter(
        esms,
        context,
        callback_url="https://notifier.example.vn/v1/receipts/esms/",
        receipt_token=TOKEN,
    )
    _send_one(adapter, make_message())
    # No query string of ours: eSMS appends "?SMSID=..." to the URL as given.
    assert esms.messages[0].callback_url == (
        f"https://notifier.example.vn/v1/receipts/esms/{TOKEN}"
    )


def test_a_callback_url_with_a_query_string_is_refused_in_settings() -> None:
    with pytest.raises(ValidationError, match="query string"):
        EsmsSettings(
            brandname=BRANDNAME,
            api_key="k",
            secret_key="s",
            receipt_token=TOKEN,  # type: ignore[arg-type]
            callback_url="https://notifier.example.vn/v1/receipts/esms?token=abc",
        )


def test_concurrent_sends_share_one_client(esms, context, make_message) -> None:
    adapter = _adapter(esms, context, max_connections=4)
    messages = [make_message(f"Ho so {i} da duoc tiep nhan.") for i in range(30)]

    async def send_all() -> list[SendResult]:
        try:
            return list(await asyncio.gather(*(adapter.send(m) for m in messages)))
        finally:
            await adapter.close()

    results = _run(send_all())
    assert len(esms.messages) == 30
    assert {sms.request_id for sms in esms.messages} == {str(m.delivery_id) for m in messages}
    assert len({r.provider_message_id for r in results}) == 30
    assert sum(esms.accepted_per_second().values()) == 30
    assert esms.peak_rate() >= 1


# -- result codes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("99", "permanent"),
        ("108", "permanent"),
        ("101", "alert"),
        ("102", "alert"),
        ("103", "alert"),
        ("104", "alert"),
        ("140", "alert"),
        ("146", "alert"),
        ("177", "alert"),
        ("118", "alert"),  # message type: our configuration (sms_type)
        ("300", "alert"),
        ("143", "alert"),  # account locked
        ("201", "alert"),  # blocked keyword: our template
        ("999", "temporary"),
    ],
)
def test_result_codes_map_to_failure_kinds(esms, context, make_message, code, kind) -> None:
    esms.fail_next(1, code)
    failure = _failure(_adapter(esms, context), make_message())
    assert failure.code == code
    if kind == "temporary":
        assert isinstance(failure, TemporaryFailure)
    else:
        assert isinstance(failure, PermanentFailure)
        assert failure.operator_alert is (kind == "alert")
    assert "0901888484" not in str(failure)
    assert esms.messages == []


def test_an_invalid_request_answer_is_our_fault_and_alerts_the_operator(
    esms, context, make_message
) -> None:
    # eSMS answers a request it cannot read with {"error": "Invalid request"} and no
    # CodeResult: our malformed request, never the citizen's failure.
    esms.fail_next_invalid_request(1)
    failure = _failure(_adapter(esms, context), make_message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert is True
    assert failure.code == "invalid-request"
    assert "0901888484" not in str(failure)
    assert esms.messages == []


def test_the_adapter_states_esms_24_hour_dedupe_window() -> None:
    # eSMS refuses a repeated RequestId for 24 hours (code 124): the resend policy of
    # an uncertain send must stay inside that window.
    assert EsmsAdapter.dedupe_window_s == 24 * 3600


def test_wrong_keys_are_an_operator_alert(esms, context, make_message) -> None:
    failure = _failure(_adapter(esms, context, api_key="not-the-key"), make_message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert is True
    assert failure.code == "101"
    assert "not-the-key" not in str(failure)


def test_unregistered_brandname_is_an_operator_alert(esms, context, make_message) -> None:
    failure = _failure(_adapter(esms, context, brandname="OTHER"), make_message())
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("104", True)


def test_a_mobifone_0891_number_is_sent_and_the_gateway_judges_it(
    esms, context, make_message
) -> None:
    # 0890-0895 were refused before any send ("not a valid Vietnamese number"); they
    # are MobiFone's 089 block and go to the gateway now.
    _send_one(_adapter(esms, context), make_message(recipient="089 123 4567"))
    assert [sms.phone for sms in esms.messages] == ["0891234567"]


def test_blocked_number_is_final_for_the_recipient(esms, context, make_message) -> None:
    esms.fail_phone("0901888484", "99")
    failure = _failure(_adapter(esms, context), make_message(recipient="090.188.8484"))
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("99", False)
    # Another number still goes through.
    _send_one(_adapter(esms, context), make_message(recipient="0981234567"))
    assert [sms.phone for sms in esms.messages] == ["0981234567"]


def test_duplicate_request_id_is_treated_as_accepted(esms, context, make_message) -> None:
    message = make_message()
    first, second = _run(_send(_adapter(esms, context), message, message))
    assert len(esms.messages) == 1  # eSMS sent it once
    assert esms.request_count == 2
    assert first.provider_message_id == esms.messages[0].provider_id
    assert second.details["duplicate"] is True
    assert "duplicate" not in first.details


# -- HTTP and transport errors ---------------------------------------------------------------


def test_outage_503_is_temporary_then_recovers(esms, context, make_message) -> None:
    esms.set_outage(True, retry_after=30)
    failure = _failure(_adapter(esms, context), make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "http-503"
    assert failure.retry_after_s == 30
    esms.set_outage(False)
    _send_one(_adapter(esms, context), make_message())
    assert len(esms.messages) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_are_temporary(esms, context, make_message, status) -> None:
    esms.fail_next_http(1, status)
    failure = _failure(_adapter(esms, context), make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == f"http-{status}"


def test_429_is_temporary_with_retry_after(esms, context, make_message) -> None:
    esms.fail_next_http(1, 429, retry_after=7)
    failure = _failure(_adapter(esms, context), make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "http-429"
    assert failure.retry_after_s == 7.0


def test_throttling_beyond_the_rate_is_429(esms, context, make_message) -> None:
    esms.throttle(2, retry_after_s=1)
    adapter = _adapter(esms, context)

    async def burst() -> list[SendResult | BaseException]:
        try:
            return list(
                await asyncio.gather(
                    *(adapter.send(make_message()) for _ in range(6)), return_exceptions=True
                )
            )
        finally:
            await adapter.close()

    outcomes = _run(burst())
    throttled = [o for o in outcomes if isinstance(o, TemporaryFailure)]
    # At most 2 a second: even straddling a second boundary, 4 of 6 cannot pass.
    assert len(esms.messages) <= 4
    assert len(throttled) == 6 - len(esms.messages)
    assert all(o.code == "http-429" and o.retry_after_s == 1.0 for o in throttled)


def test_unexpected_4xx_is_an_operator_alert(esms, context, make_message) -> None:
    failure = _failure(_adapter(esms, context, base_url=esms.base_url + "/wrong"), make_message())
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("http-404", True)


def test_timeout_is_temporary(esms, context, make_message) -> None:
    esms.set_latency(1.0)
    failure = _failure(_adapter(esms, context, timeout_s=0.2), make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "timeout"


def test_unreachable_gateway_is_temporary(context, make_message) -> None:
    sim = EsmsSimulator().start()
    adapter = _adapter(sim, context)
    sim.stop()  # nothing listens on that port any more
    failure = _failure(adapter, make_message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "connect-failed"


# -- checks before any HTTP request ------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    [
        "024 3825 3215",  # Hanoi landline
        "+1 202 555 0143",  # not Vietnamese
        "01688888888",  # old 11-digit mobile prefix
        "1080",  # short code
        "09018884",  # too short
        "not a number",
    ],
)
def test_invalid_phone_fails_before_any_request(esms, context, make_message, recipient) -> None:
    failure = _failure(_adapter(esms, context), make_message(recipient=recipient))
    assert isinstance(failure, PermanentFailure)
    assert failure.code == "invalid-phone"
    assert failure.operator_alert is False
    assert recipient not in str(failure)
    assert esms.request_count == 0


def test_too_long_text_is_refused_before_any_request(esms, context, make_message) -> None:
    text = "Hồ sơ của ông/bà đã được tiếp nhận. " * 14  # ~500 characters: 4 GSM-7 segments
    failure = _failure(_adapter(esms, context), make_message(text))
    assert isinstance(failure, PermanentFailure)
    assert (failure.code, failure.operator_alert) == ("too-long", True)
    assert esms.request_count == 0
    # A gateway allowed more segments takes it.
    result = _send_one(_adapter(esms, context, max_segments=4), make_message(text))
    assert result.details["segments"] == 4


def test_empty_text_is_refused(esms, context, make_message) -> None:
    failure = _failure(_adapter(esms, context), make_message("   "))
    assert isinstance(failure, PermanentFailure)
    assert failure.code == "empty-text"
    assert esms.request_count == 0


# -- delivery reports -----------------------------------------------------------------------------


def _receipt_settings(**extra: Any) -> EsmsSettings:
    values: dict[str, Any] = {
        "brandname": BRANDNAME,
        "api_key": "k",
        "secret_key": "s",
        "receipt_token": TOKEN,
    }
    values.update(extra)
    return EsmsSettings.model_validate(values)


def _report(**query: str) -> ReceiptRequest:
    return ReceiptRequest(method="GET", headers={}, query=query, body=b"", received_at=time.time())


def test_delivery_report_end_to_end(esms, context, make_message, receipt_catcher) -> None:
    adapter = _adapter(esms, context, callback_url=receipt_catcher.url, receipt_token=TOKEN)
    message = make_message()
    result = _send_one(adapter, message)
    [sms] = esms.messages

    response = esms.send_report(sms)
    assert response.status_code == 200
    [request] = receipt_catcher.received
    assert request.method == "GET"
    assert receipt_catcher.paths == ["/v1/receipts/esms"]
    assert request.token == TOKEN
    assert "token" not in request.query
    receipts = EsmsAdapter.parse_receipt(adapter.settings, request)
    assert len(receipts) == 1
    assert receipts[0].delivered is True
    assert receipts[0].delivery_id == message.delivery_id
    assert receipts[0].provider_message_id == result.provider_message_id


def test_undelivered_and_rejected_reports(esms, context, make_message, receipt_catcher) -> None:
    adapter = _adapter(esms, context, callback_url=receipt_catcher.url, receipt_token=TOKEN)
    message = make_message()
    _send_one(adapter, message)
    [sms] = esms.messages
    esms.send_report(sms, failed=1)
    esms.send_report(sms, send_status=4)
    failed, rejected = (
        EsmsAdapter.parse_receipt(adapter.settings, r) for r in receipt_catcher.received
    )
    assert [(r.delivered, r.delivery_id) for r in failed] == [(False, message.delivery_id)]
    assert failed[0].error_code == "SendStatus=5"
    assert [(r.delivered, r.error_code) for r in rejected] == [(False, "SendStatus=4")]


def test_simulator_can_report_by_itself(context, make_message, receipt_catcher) -> None:
    with EsmsSimulator(auto_report_after_s=0.05) as sim:
        adapter = _adapter(sim, context, callback_url=receipt_catcher.url, receipt_token=TOKEN)
        message = make_message()
        _send_one(adapter, message)
        deadline = time.monotonic() + 5
        while not receipt_catcher.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.report_errors == []
    [request] = receipt_catcher.received
    [receipt] = EsmsAdapter.parse_receipt(adapter.settings, request)
    assert (receipt.delivered, receipt.delivery_id) == (True, message.delivery_id)


@pytest.mark.parametrize("status", ["1", "2", "7"])
def test_in_progress_reports_give_no_receipt(status) -> None:
    delivery_id = str(uuid.uuid4())
    request = _report(
        token=TOKEN,
        SMSID="abc",
        SendStatus=status,
        SendSuccess="0",
        SendFailed="0",
        RequestId=delivery_id,
    )
    assert EsmsAdapter.parse_receipt(_receipt_settings(), request) == []


def test_report_without_request_id_matches_by_smsid() -> None:
    request = _report(
        token=TOKEN, SMSID="abc123", SendStatus="5", SendSuccess="1", SendFailed="0", RequestId=""
    )
    [receipt] = EsmsAdapter.parse_receipt(_receipt_settings(), request)
    assert (receipt.delivered, receipt.delivery_id, receipt.provider_message_id) == (
        True,
        None,
        "abc123",
    )


@pytest.mark.parametrize(
    "query",
    [
        {"SMSID": "abc", "SendStatus": "5", "SendSuccess": "1"},  # no token
        {"token": "wrong-token-0123456789", "SMSID": "abc", "SendStatus": "5", "SendSuccess": "1"},
        {"token": TOKEN[:-1], "SMSID": "abc", "SendStatus": "5", "SendSuccess": "1"},
        {"token": TOKEN, "SMSID": "abc"},  # no SendStatus
        {"token": TOKEN, "SendStatus": "5", "SendSuccess": "1"},  # no id at all
        {"token": TOKEN, "SMSID": "abc", "SendStatus": "5", "SendSuccess": "one"},
    ],
)
def test_bad_reports_are_refused(query) -> None:
    with pytest.raises(InvalidReceipt):
        EsmsAdapter.parse_receipt(_receipt_settings(), _report(**query))


def test_the_token_in_the_path_proves_a_report_and_the_old_query_form_still_does() -> None:
    report = {"SMSID": "abc", "SendStatus": "5", "SendSuccess": "1", "SendFailed": "0"}
    by_path = replace(_report(**report), token=TOKEN)
    by_query = _report(token=TOKEN, **report)
    assert EsmsAdapter.parse_receipt(_receipt_settings(), by_path)[0].delivered
    assert EsmsAdapter.parse_receipt(_receipt_settings(), by_query)[0].delivered
    # A wrong token in the path is not saved by a right one in the query.
    both = replace(by_query, token="wrong-token-0123456789")
    with pytest.raises(InvalidReceipt):
        EsmsAdapter.parse_receipt(_receipt_settings(), both)


def test_a_report_with_other_counts_or_extra_parameters_is_the_same_report() -> None:
    report = {
        "token": TOKEN,
        "SMSID": "abc",
        "SendStatus": "5",
        "SendSuccess": "1",
        "SendFailed": "0",
        "RequestId": str(uuid.uuid4()),
    }
    [first] = EsmsAdapter.parse_receipt(_receipt_settings(), _report(**report))
    [again] = EsmsAdapter.parse_receipt(
        _receipt_settings(), _report(**{**report, "SendSuccess": "2", "extra": "x"})
    )
    assert first.nonce == again.nonce
    # A later state of the same message is news: another report.
    [rejected] = EsmsAdapter.parse_receipt(
        _receipt_settings(), _report(**{**report, "SendStatus": "4"})
    )
    assert rejected.nonce != first.nonce


def test_an_unreadable_report_from_a_verified_caller_is_malformed_not_forged() -> None:
    with pytest.raises(MalformedReceipt):
        EsmsAdapter.parse_receipt(_receipt_settings(), _report(token=TOKEN, SMSID="abc"))


def test_reports_are_refused_without_a_configured_token() -> None:
    settings = EsmsSettings(brandname=BRANDNAME, api_key="k", secret_key="s")  # type: ignore[arg-type]
    request = _report(token="", SMSID="abc", SendStatus="5", SendSuccess="1")
    with pytest.raises(InvalidReceipt):
        EsmsAdapter.parse_receipt(settings, request)


# -- health, settings, registration ------------------------------------------------------------


def test_health_reports_balance_or_bad_keys(esms, context) -> None:
    async def check(adapter: EsmsAdapter) -> tuple[bool, str]:
        try:
            health = await adapter.health()
            return health.ok, health.detail
        finally:
            await adapter.close()

    assert _run(check(_adapter(esms, context))) == (True, f"balance {esms.balance}")
    ok, detail = _run(check(_adapter(esms, context, secret_key="wrong")))
    assert ok is False
    assert "101" in detail


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"brandname": "TWELVECHARSX"}, "brandname"),
        ({"brandname": ""}, "brandname"),
        ({"callback_url": "https://x.vn/v1/receipts/esms"}, "callback_url"),  # no token
        (
            {"callback_url": "https://x.vn/v1/receipts/esms?token=abc", "receipt_token": TOKEN},
            "token",
        ),
        ({"receipt_token": "short"}, "receipt_token"),
        ({"base_url": "ftp://rest.esms.vn"}, "base_url"),
        ({"max_segments": 0}, "max_segments"),
    ],
)
def test_settings_are_checked(extra, field) -> None:
    values: dict[str, Any] = {"brandname": BRANDNAME, "api_key": "k", "secret_key": "s"}
    values.update(extra)
    with pytest.raises(ValidationError) as caught:
        EsmsSettings.model_validate(values)
    assert field in str(caught.value)


def test_secrets_stay_out_of_repr() -> None:
    settings = _receipt_settings(api_key="the-api-key", secret_key="the-secret-key")
    shown = repr(settings) + str(settings.model_dump())
    for secret in ("the-api-key", "the-secret-key", TOKEN):
        assert secret not in shown


def test_entry_points_register_the_three_gateways() -> None:
    found = {e.name: e.load() for e in entry_points(group="notifier.adapters")}
    assert found["esms"] is EsmsAdapter
    assert found["speedsms"] is SpeedSmsAdapter
    assert found["http_sms"] is HttpSmsAdapter


def test_failover_order_comes_from_channel_settings() -> None:
    settings = Settings(
        channels={"sms": {"providers": ["speedsms", "esms"]}},  # type: ignore[dict-item]
        adapters={
            "esms": {"brandname": BRANDNAME, "api_key": "k", "secret_key": "s"},
            "speedsms": {"brandname": BRANDNAME, "access_token": "t"},
        },
    )
    installed: dict[str, Any] = {
        "esms": EsmsAdapter,
        "speedsms": SpeedSmsAdapter,
        "http_sms": HttpSmsAdapter,
    }
    registry = Registry.from_settings(settings, installed=installed)
    assert [p.name for p in registry.providers("sms")] == ["speedsms", "esms"]


def test_a_done_report_carries_what_esms_charged_and_an_unfinished_one_does_not() -> None:
    settings = _receipt_settings()
    base = {"SMSID": "s-1", "RequestId": str(uuid.uuid4()), "token": TOKEN}
    [delivered] = EsmsAdapter.parse_receipt(
        settings, _report(**base, SendStatus="5", SendSuccess="1", TotalPrice="1720.0000")
    )
    assert delivered.charge_vnd == Decimal("1720")
    [failed] = EsmsAdapter.parse_receipt(
        settings, _report(**base, SendStatus="5", SendFailed="1", TotalPrice="0.0000")
    )
    assert failed.charge_vnd == Decimal(0)  # not delivered: not billed
    [rejected] = EsmsAdapter.parse_receipt(settings, _report(**base, SendStatus="4"))
    assert rejected.charge_vnd is None  # no figure given: our estimate stands
    [garbled] = EsmsAdapter.parse_receipt(
        settings, _report(**base, SendStatus="5", SendSuccess="1", TotalPrice="n/a")
    )
    assert garbled.delivered
    assert garbled.charge_vnd is None
