"""The ZNS adapter against the Zalo simulator over real HTTP, with a real token store.

Nothing in httpx or the adapter is patched: failures are the simulator's own answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import unicodedata
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from notifier_simulators.zalo import (
    APP_TOO_OLD,
    OUTSIDE_HOURS,
    QUOTA_ERROR,
    REFUSED_TYPE,
    UNKNOWN_ERROR,
    ZaloSimulator,
)
from notifier_zalo import ZaloSettings, ZaloZnsAdapter, classify_answer
from notifier_zalo.adapter import seconds_until_window
from notifier_zalo.params import shorten
from pydantic import ValidationError

from notifier.adapter import (
    AdapterContext,
    OutboundMessage,
    PermanentFailure,
    RecipientKind,
    SendResult,
    TemporaryFailure,
)
from notifier.store import Database
from notifier.store.schema import utcnow
from notifier.store.tokens import Token, TokenGrant, TokenStore

KEY = "k" * 32  # the token store key of conftest.py
PHONE = "+84901888484"
PHONE_ZNS = "84901888484"
DATA = {
    "customer_name": "Nguyễn Văn Ánh",
    "dossier_code": "000.00.12.H29-231025-0001",
    "due_date": "27/10/2025",
}

Factory = Callable[..., ZaloZnsAdapter]


def message(
    *,
    recipient: str = PHONE,
    template_id: str = "245002",
    data: dict[str, Any] | str | None = None,
    delivery_id: uuid.UUID | None = None,
) -> OutboundMessage:
    raw = data if isinstance(data, str) else json.dumps(DATA if data is None else data)
    return OutboundMessage(
        delivery_id=delivery_id or uuid.uuid4(),
        event_id=uuid.uuid4(),
        channel="zalo",
        recipient=recipient,
        language="vi",
        parts={"template_id": template_id, "template_data": raw},
        dossier_code="000.00.12.H29-231025-0001",
        agency_code="000.00.12.H29",
        status="received",
    )


def send(adapter: ZaloZnsAdapter, *messages: OutboundMessage) -> list[SendResult]:
    """Send one after the other on a fresh loop, then close the adapter's client."""

    async def run() -> list[SendResult]:
        try:
            return [await adapter.send(m) for m in messages]
        finally:
            await adapter.close()

    return asyncio.run(run())


def fail(adapter: ZaloZnsAdapter, msg: OutboundMessage) -> BaseException:
    with pytest.raises((PermanentFailure, TemporaryFailure)) as caught:
        send(adapter, msg)
    return caught.value


def seed_access_token(sim: ZaloSimulator, tokens: TokenStore, expires_in_s: float) -> str:
    """Store a working access token (as if a refresh happened earlier)."""
    access = sim.issue_access_token()
    tokens.put(
        "zalo",
        refresh_token=sim.current_refresh_token,
        access_token=access,
        expires_at=utcnow() + timedelta(seconds=expires_in_s),
    )
    return access


# -- the adapter's declaration ----------------------------------------------------------


def test_declaration_and_entry_point() -> None:
    from importlib.metadata import entry_points

    assert ZaloZnsAdapter.name == "zalo"
    assert ZaloZnsAdapter.channel == "zalo"
    assert ZaloZnsAdapter.recipient_kind is RecipientKind.ZALO
    assert [p.name for p in ZaloZnsAdapter.template_parts] == ["template_id", "template_data"]
    assert ZaloZnsAdapter.accepts_receipts
    [entry] = [e for e in entry_points(group="notifier.adapters") if e.name == "zalo"]
    assert entry.load() is ZaloZnsAdapter


def test_settings_keep_secrets_out_of_repr() -> None:
    settings = ZaloSettings(app_id="1", app_secret="very-secret-1", oa_secret_key="oa-secret-2")
    assert "very-secret-1" not in repr(settings)
    assert "oa-secret-2" not in repr(settings)
    assert settings.token_name == "zalo"
    assert settings.refresh_margin_s == 600
    assert settings.max_param_length == 100
    assert settings.receipt_max_age_s == 86_400
    with pytest.raises(ValidationError):
        ZaloSettings(app_id="1", app_secret="s", unknown_key=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ZaloSettings(app_id="1", app_secret="s", base_url="ftp://x")
    # Lists and tables given as environment variables arrive as JSON strings.
    from_env = ZaloSettings.model_validate(
        {
            "app_id": "1",
            "app_secret": "s",
            "quota_error_codes": "[-1200, -1201]",
            "param_limits": '{"customer_name": 20}',
            "development_mode": "true",
        }
    )
    assert from_env.quota_error_codes == (-1200, -1201)
    assert from_env.param_limits == {"customer_name": 20}
    assert from_env.development_mode is True


# -- the request ------------------------------------------------------------------------


def test_request_shape_and_result(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    sim.set_quota(10)
    delivery_id = uuid.uuid4()
    [result] = send(make_adapter(), message(delivery_id=delivery_id))

    [sent] = sim.messages
    assert sent.phone == PHONE_ZNS  # 84 form, no plus
    assert sent.template_id == "245002"
    assert sent.template_data == DATA  # a JSON object, not a string
    assert sent.tracking_id == str(delivery_id)
    assert sent.mode is None
    assert result.provider_message_id == sent.msg_id
    assert result.details == {"quota_daily": 10, "quota_remaining": 9, "recipient": "phone"}
    assert not result.delivered
    # No access token was stored: the adapter fetched one and kept the new refresh token.
    assert sim.refresh_count == 1
    stored = tokens.get("zalo")
    assert stored is not None
    assert stored.refresh_token == sim.current_refresh_token != "rt-initial-0001"
    assert stored.access_token == sent.access_token


def test_development_mode_flag(sim: ZaloSimulator, make_adapter: Factory) -> None:
    send(make_adapter(development_mode=True), message())
    assert sim.messages[0].mode == "development"


def test_token_is_cached_between_sends(sim: ZaloSimulator, make_adapter: Factory) -> None:
    adapter = make_adapter()
    send(adapter, message(), message())
    send(adapter, message())  # another loop, same adapter
    assert len(sim.messages) == 3
    assert sim.refresh_count == 1


# -- tokens -----------------------------------------------------------------------------


def test_token_refreshed_before_it_expires(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    old = seed_access_token(sim, tokens, expires_in_s=300)  # valid, but inside the margin
    send(make_adapter(refresh_margin_s=600), message())
    assert sim.refresh_count == 1
    assert sim.messages[0].access_token != old
    stored = tokens.get("zalo")
    assert stored is not None
    assert stored.refresh_token == sim.current_refresh_token


def test_token_outside_the_margin_is_used_as_is(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    old = seed_access_token(sim, tokens, expires_in_s=3600)
    send(make_adapter(refresh_margin_s=600), message())
    assert sim.refresh_count == 0
    assert sim.messages[0].access_token == old


def test_token_invalidated_mid_run_refreshes_once(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    adapter = make_adapter()
    send(adapter, message())
    assert sim.refresh_count == 1
    sim.expire_access_token()  # the cached token still looks valid for 25 hours
    [result] = send(adapter, message())
    assert result.provider_message_id == sim.messages[1].msg_id
    assert sim.refresh_count == 2
    assert len(sim.messages) == 2
    stored = tokens.get("zalo")
    assert stored is not None
    assert stored.refresh_token == sim.current_refresh_token
    assert stored.access_token == sim.current_access_token == sim.messages[1].access_token
    assert stored.version == 3  # put, first refresh, second refresh


class CountingTokenStore(TokenStore):
    """The real store, counting the refresh transactions (row locks) it is asked for."""

    refreshes = 0

    def refresh(
        self, name: str, refresher: Callable[[Token], TokenGrant], *, seen_version: int
    ) -> Token:
        self.refreshes += 1
        return super().refresh(name, refresher, seen_version=seen_version)


def test_rejected_token_picks_up_another_workers_refresh(
    sim: ZaloSimulator, database: Database, make_adapter: Factory
) -> None:
    first_store, second_store = CountingTokenStore(database, KEY), CountingTokenStore(database, KEY)
    first, second = make_adapter(store=first_store), make_adapter(store=second_store)
    send(first, message())
    send(second, message())  # reads the stored token: no refresh of its own
    assert sim.refresh_count == 1
    assert second_store.refreshes == 0
    sim.expire_access_token()
    send(first, message())  # -124, refreshes
    assert sim.refresh_count == 2
    send(second, message())  # -124 with its cached token: re-reads the store, finds the new one
    assert sim.refresh_count == 2
    assert second_store.refreshes == 0  # not even the row lock was needed
    assert len(sim.messages) == 4
    assert sim.messages[3].access_token == sim.messages[2].access_token


def test_token_expiring_during_a_run(sim: ZaloSimulator, make_adapter: Factory) -> None:
    sim.access_token_ttl_s = 2
    adapter = make_adapter(refresh_margin_s=1)
    send(adapter, message())
    asyncio.run(asyncio.sleep(1.2))  # now inside the 1 s margin of the 2 s token
    send(adapter, message())
    assert sim.refresh_count == 2
    assert sim.messages[0].access_token != sim.messages[1].access_token


def test_invalid_refresh_token_alerts_the_operator(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    tokens.put("zalo", refresh_token="rt-dead-or-wrong")
    failure = fail(make_adapter(), message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert
    assert "notifier tokens set zalo --refresh-token-stdin" in failure.reason
    assert "rt-dead-or-wrong" not in str(failure)
    assert sim.messages == []
    stored = tokens.get("zalo")
    assert stored is not None
    assert stored.refresh_token == "rt-dead-or-wrong"  # nothing stored


def test_used_refresh_token_is_refused_by_the_simulator(sim: ZaloSimulator) -> None:
    def refresh(token: str) -> dict[str, Any]:
        answer = httpx.post(
            sim.oauth_url,
            headers={"secret_key": sim.app_secret},
            data={"refresh_token": token, "app_id": sim.app_id, "grant_type": "refresh_token"},
        )
        result: dict[str, Any] = answer.json()
        return result

    first = refresh("rt-initial-0001")
    assert first["refresh_token"] != "rt-initial-0001"
    assert first["access_token"]
    assert "access_token" not in refresh("rt-initial-0001")  # single use
    assert refresh(first["refresh_token"])["access_token"]
    assert sim.refresh_count == 3
    assert sim.refresh_failures == 1


def test_oauth_outage_is_temporary_and_keeps_the_tokens(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    sim.set_oauth_outage(True)
    adapter = make_adapter()
    failure = fail(adapter, message())
    assert isinstance(failure, TemporaryFailure)
    stored = tokens.get("zalo")
    assert stored is not None
    assert stored.version == 1
    assert stored.refresh_token == "rt-initial-0001"
    sim.set_oauth_outage(False)
    send(adapter, message())
    assert len(sim.messages) == 1


def test_no_tokens_stored_alerts_the_operator(sim: ZaloSimulator, make_adapter: Factory) -> None:
    failure = fail(make_adapter(token_name="zalo-other-oa"), message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert
    assert "notifier tokens set zalo-other-oa" in failure.reason


# -- the citizen's side: permanent, no alert (the core falls back to SMS) ---------------


@pytest.mark.parametrize(
    ("mark", "code"),
    [("not_zalo_user", "-118"), ("blocked", "-114"), ("invalid_phone", "-108")],
)
def test_recipient_errors_are_permanent_without_alert(
    sim: ZaloSimulator, make_adapter: Factory, mark: str, code: str
) -> None:
    getattr(sim, mark)("0901888484")  # any written form of the same number
    failure = fail(make_adapter(), message())
    assert isinstance(failure, PermanentFailure)
    assert not failure.operator_alert
    assert failure.code == code
    assert "901888484" not in str(failure)
    assert sim.messages == []


@pytest.mark.parametrize(
    ("code", "what"),
    [(APP_TOO_OLD, "too old"), (REFUSED_TYPE, "refused this type")],
)
def test_the_citizens_zalo_app_or_choice_is_the_recipients_failure_not_an_alert(
    sim: ZaloSimulator, make_adapter: Factory, code: int, what: str
) -> None:
    # -110: the citizen's Zalo app is too old; -139: the citizen refused this type of
    # message. Neither is ours to fix: permanent for Zalo, the core falls back to SMS.
    sim.fail_next(1, code)
    failure = fail(make_adapter(), message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert is False
    assert failure.code == str(code)
    assert what in failure.reason
    assert "901888484" not in str(failure)
    assert sim.messages == []


def test_a_phone_that_is_not_one_is_permanent_and_never_echoed(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    # A bare id is not a phone: user ids come as uid:<id> from the planner.
    failure = fail(make_adapter(), message(recipient="4368496045530239152"))
    assert isinstance(failure, PermanentFailure)
    assert not failure.operator_alert
    assert failure.code == "not_a_phone"
    landline = fail(make_adapter(), message(recipient="+842438253888"))
    assert isinstance(landline, PermanentFailure)
    assert landline.code == "invalid_phone"
    assert "38253888" not in str(landline)
    assert sim.messages == []


def test_a_zalo_user_id_recipient_is_sent_as_a_zbs_template_message_by_uid(
    sim: ZaloSimulator, make_adapter: Factory, tokens: TokenStore
) -> None:
    seed_access_token(sim, tokens, 3600)
    reference = uuid.uuid4()
    [result] = send(
        make_adapter(), message(recipient="uid:4368496045530239152", delivery_id=reference)
    )
    [sent] = sim.messages
    assert sent.user_id == "4368496045530239152"
    assert sent.phone == ""
    assert sent.tracking_id == str(reference)
    assert sent.template_id == "245002"
    assert result.provider_message_id == sent.msg_id
    # Priced by how it was addressed: by user id, ZBS's cheaper price.
    assert result.details["recipient"] == "uid"
    assert sent.charge_vnd == sim.uid_price_vnd


def test_a_phone_recipient_is_marked_as_sent_by_phone_for_its_price(
    sim: ZaloSimulator, make_adapter: Factory, tokens: TokenStore
) -> None:
    seed_access_token(sim, tokens, 3600)
    [result] = send(make_adapter(), message())
    [sent] = sim.messages
    assert sent.user_id is None
    assert result.details["recipient"] == "phone"
    assert sent.charge_vnd == sim.zns_price_vnd


def test_a_template_that_does_not_allow_sending_by_uid_is_permanent_without_an_alert(
    sim: ZaloSimulator, make_adapter: Factory, tokens: TokenStore
) -> None:
    seed_access_token(sim, tokens, 3600)
    sim.refuse_uid_template("245002")
    failure = fail(make_adapter(), message(recipient="uid:4368496045530239152"))
    assert isinstance(failure, PermanentFailure)
    assert failure.code == "-249"
    # No alert: it would count against Zalo's circuit and pause the phone sends too.
    assert not failure.operator_alert
    assert "approved again" in failure.reason
    assert "4368496045530239152" not in str(failure)
    malformed = fail(make_adapter(), message(recipient="uid:12ab"))
    assert isinstance(malformed, PermanentFailure)
    assert malformed.code == "invalid_user_id"
    assert sim.messages == []


# -- our side: permanent with an operator alert ------------------------------------------


@pytest.mark.parametrize("code", [-131, -132])
def test_template_refused_alerts_the_operator(
    sim: ZaloSimulator, make_adapter: Factory, code: int
) -> None:
    sim.reject_template("245002", code)
    failure = fail(make_adapter(), message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert
    assert failure.code == str(code)


def test_quota_exhausted_alerts_with_code_quota(sim: ZaloSimulator, make_adapter: Factory) -> None:
    sim.set_quota(1)
    adapter = make_adapter()
    [ok] = send(adapter, message())
    assert ok.details["quota_remaining"] == 0
    failure = fail(adapter, message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert
    assert failure.code == "quota"


def test_a_balance_too_low_answer_alerts_the_operator(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    sim.fail_next(1, QUOTA_ERROR)  # -115: the OA's ZBS balance is too low
    failure = fail(make_adapter(), message())
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert is True
    assert failure.code == "quota"
    assert "-115" in failure.reason


def test_minus_144_is_not_taken_for_a_quota_code() -> None:
    # -144 is not in Zalo's ZBS error list: an unknown code, for an operator to look at,
    # not the quota case.
    settings = ZaloSettings(app_id="1", app_secret="s")
    assert settings.quota_error_codes == ()
    with pytest.raises(PermanentFailure) as unknown:
        classify_answer({"error": -144, "message": "x"}, settings)
    assert unknown.value.code == "-144"


def test_quota_is_recognised_by_code_or_by_message() -> None:
    settings = ZaloSettings(app_id="1", app_secret="s")
    with pytest.raises(PermanentFailure) as by_code:
        classify_answer({"error": QUOTA_ERROR}, settings)
    assert by_code.value.code == "quota"
    assert by_code.value.operator_alert
    with pytest.raises(PermanentFailure) as by_text:
        classify_answer({"error": -1999, "message": "Out of daily Quota"}, settings)
    assert by_text.value.code == "quota"
    custom = ZaloSettings(app_id="1", app_secret="s", quota_error_codes=(-150,))
    with pytest.raises(PermanentFailure) as configured:
        classify_answer({"error": -150, "message": "x"}, custom)
    assert configured.value.code == "quota"
    with pytest.raises(PermanentFailure) as unknown:
        classify_answer({"error": -150, "message": "x"}, settings)
    assert unknown.value.code == "-150"
    assert unknown.value.operator_alert


def test_template_problems_alert_the_operator(sim: ZaloSimulator, make_adapter: Factory) -> None:
    adapter = make_adapter()
    for bad in (
        message(template_id=""),
        message(template_id="TTHC_RECEIVED"),
        message(data="not json {"),
        message(data="[1, 2]"),
        message(data={"customer_name": None}),
        message(data={"dossier_code": "X" * 31}),  # codes are never cut
    ):
        failure = fail(adapter, bad)
        assert isinstance(failure, PermanentFailure), bad.parts
        assert failure.operator_alert, bad.parts
    assert sim.messages == []
    assert sim.refresh_count == 0  # refused before any call to Zalo


def test_long_parameters_are_shortened(sim: ZaloSimulator, make_adapter: Factory) -> None:
    name = "Công Tôn Nữ Thị Hoàng Yến Nhi Phương Thảo"  # 41 characters
    send(
        make_adapter(max_param_length=40),
        message(
            data={
                "customer_name": name,
                "reason": "Thiếu bản sao giấy khai sinh có chứng thực, sổ hộ khẩu, giấy tờ khác",
                "amount": 1250000,
            }
        ),
    )
    data = sim.messages[0].template_data
    assert len(data["customer_name"]) <= 30
    assert data["customer_name"].endswith("…")
    assert data["customer_name"].startswith("Công Tôn Nữ Thị Hoàng")
    assert len(data["reason"]) <= 40
    assert data["reason"].endswith("…")
    assert data["amount"] == 1250000


# -- the provider's side: temporary ------------------------------------------------------


def test_outage_is_temporary(sim: ZaloSimulator, make_adapter: Factory) -> None:
    adapter = make_adapter()
    sim.set_outage(True)
    failure = fail(adapter, message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "http-503"
    assert failure.maybe_sent is False  # Zalo answered: nothing was taken
    sim.set_outage(False)
    send(adapter, message())
    assert len(sim.messages) == 1


def test_outside_sending_hours_is_retried_later(sim: ZaloSimulator, make_adapter: Factory) -> None:
    sim.fail_next(1, OUTSIDE_HOURS)
    failure = fail(make_adapter(), message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "-133"
    assert failure.retry_after_s is not None
    assert failure.retry_after_s >= 60


@pytest.mark.parametrize(
    ("vietnam_time", "wait_s"),
    [
        ("2026-12-03T22:00:00", 8 * 3600),  # closes at 22:00: opens at 06:00 next day
        ("2026-12-03T23:30:00", 6.5 * 3600),
        ("2026-12-04T05:00:00", 3600),  # one hour before 06:00, not two before 07:00
        ("2026-12-04T05:59:00", 60),
    ],
)
def test_minus_133_waits_for_six_in_the_morning_vietnam_time(
    vietnam_time: str, wait_s: float
) -> None:
    # -133: no sends 22:00-06:00 for this template: the retry is due at 06:00.
    now = datetime.fromisoformat(vietnam_time).replace(tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
    assert seconds_until_window(now) == wait_s


def test_unknown_error_minus_100_is_temporary_without_an_alert(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    # -100: "unknown error, try again later" is Zalo's own trouble, retried.
    adapter = make_adapter()
    sim.fail_next(1, UNKNOWN_ERROR)
    failure = fail(adapter, message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "-100"
    assert sim.messages == []
    send(adapter, message())  # and the next try goes through
    assert len(sim.messages) == 1


def test_timeout_is_temporary(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    seed_access_token(sim, tokens, expires_in_s=3600)
    sim.latency_s = 1.0
    failure = fail(make_adapter(timeout_s=0.2), message())
    assert isinstance(failure, TemporaryFailure)
    # Zalo may have taken the message, and does not dedupe by tracking_id.
    assert failure.maybe_sent is True


def test_connection_refused_is_temporary(
    sim: ZaloSimulator, tokens: TokenStore, make_adapter: Factory
) -> None:
    seed_access_token(sim, tokens, expires_in_s=3600)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failure = fail(make_adapter(base_url=f"http://127.0.0.1:{port}"), message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.maybe_sent is False  # never connected: nothing was sent


def test_http_429_honours_retry_after(
    sim: ZaloSimulator, tokens: TokenStore, make_settings: Callable[..., ZaloSettings]
) -> None:
    # The async transport seam: the only test that does not go through the simulator.
    seed_access_token(sim, tokens, expires_in_s=3600)
    transport = httpx.MockTransport(
        lambda request: httpx.Response(429, headers={"Retry-After": "7"}, text="slow down")
    )
    context = AdapterContext(
        inbox=None,
        tokens=tokens,  # type: ignore[arg-type]
        http_transport=transport,
    )
    failure = fail(ZaloZnsAdapter(make_settings(), context), message())
    assert isinstance(failure, TemporaryFailure)
    assert failure.code == "http-429"
    assert failure.retry_after_s == 7


def test_health_reports_the_token(sim: ZaloSimulator, make_adapter: Factory) -> None:
    adapter = make_adapter()
    assert asyncio.run(adapter.health()).ok
    send(adapter, message())
    health = asyncio.run(adapter.health())
    assert health.ok
    assert "expires" in health.detail
    assert health.detail.find(sim.current_access_token or "-") == -1
    missing = asyncio.run(make_adapter(token_name="nothing-here").health())
    assert not missing.ok


def test_shortening_never_splits_a_letter_from_its_accents() -> None:
    decomposed = unicodedata.normalize("NFD", "Nguyễn Thị Minh Khai Phường Đông")
    for limit in range(2, len(decomposed)):
        short = shorten(decomposed, limit)
        assert len(short) <= limit
        body = short.removesuffix("…")
        assert decomposed.startswith(body)
        # The next character of the original is never an accent of the last kept letter.
        assert not unicodedata.combining(decomposed[len(body)]) if body else True
