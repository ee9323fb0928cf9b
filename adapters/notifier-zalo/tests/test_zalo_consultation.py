"""Replies to a user's text to the OA: the consultation message, within Zalo's window."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from notifier_simulators.zalo import ZaloSimulator
from notifier_zalo import ZaloZnsAdapter

from notifier.adapter import REPLY_STATUS, InboundReference, OutboundMessage, PermanentFailure

Factory = Callable[..., ZaloZnsAdapter]
USER = "4455667788990011"


def reply(*, received_at: datetime | None = None, reference: bool = True) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        channel="zalo",
        recipient=USER,
        language="vi",
        parts={"text": "Hồ sơ 000.00.12.H29-231025-0001: Đang xử lý."},
        dossier_code="000.00.12.H29-231025-0001",
        agency_code="000.00.12.H29",
        status=REPLY_STATUS,
        in_reply_to=InboundReference(
            provider_message_id="user_send_text:abc", received_at=received_at or datetime.now(UTC)
        )
        if reference
        else None,
    )


def run(adapter: ZaloZnsAdapter, message: OutboundMessage) -> object:
    async def go() -> object:
        try:
            return await adapter.send(message)
        finally:
            await adapter.close()

    return asyncio.run(go())


def test_a_reply_within_the_window_goes_as_a_consultation_message_to_the_user(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    sim.build_user_text(USER, "TRA CUU 000.00.12.H29-231025-0001")  # the user wrote
    result = run(make_adapter(oa_api_url=sim.base_url), reply())
    [sent] = sim.consultations
    assert (sent.user_id, sent.text) == (USER, "Hồ sơ 000.00.12.H29-231025-0001: Đang xử lý.")
    assert result.provider_message_id == sent.message_id  # type: ignore[attr-defined]
    assert sim.messages == []  # not a ZNS template message


def test_after_the_window_the_reply_fails_for_good_without_calling_zalo(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    late = datetime.now(UTC) - timedelta(hours=25)
    with pytest.raises(PermanentFailure) as caught:
        run(make_adapter(oa_api_url=sim.base_url), reply(received_at=late))
    assert caught.value.code == "cs_window"
    assert sim.consultations == []


def test_zalo_refusing_for_no_recent_interaction_is_a_permanent_failure(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    # The simulator answers -230 to a user who never wrote to the OA.
    with pytest.raises(PermanentFailure) as caught:
        run(make_adapter(oa_api_url=sim.base_url), reply())
    assert caught.value.code == "-230"
    assert not caught.value.operator_alert


def test_a_reply_that_names_no_message_is_not_sent(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    with pytest.raises(PermanentFailure):
        run(make_adapter(oa_api_url=sim.base_url), reply(reference=False))
    assert sim.consultations == []


# -- after the window: the reply template's ZBS template, by the same user id ------------

ZBS_PARTS = {
    "template_id": "245101",
    "template_data": '{"dossier_code": "000.00.12.H29-231025-0001", "status_name": "Đang xử lý"}',
}


def reply_with_template(*, received_at: datetime | None = None) -> OutboundMessage:
    message = reply(received_at=received_at)
    return replace(message, parts={**message.parts, **ZBS_PARTS})


def test_a_reply_after_the_window_goes_as_the_reply_templates_zbs_template_to_the_user_id(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    late = datetime.now(UTC) - timedelta(hours=25)
    message = reply_with_template(received_at=late)
    result = run(make_adapter(oa_api_url=sim.base_url), message)
    assert sim.consultations == []  # Zalo would refuse it: not even tried
    [sent] = sim.messages
    assert (sent.user_id, sent.phone, sent.template_id) == (USER, "", "245101")
    assert sent.template_data == {
        "dossier_code": "000.00.12.H29-231025-0001",
        "status_name": "Đang xử lý",
    }
    assert sent.tracking_id == str(message.delivery_id)
    assert result.provider_message_id == sent.msg_id  # type: ignore[attr-defined]
    details = result.details  # type: ignore[attr-defined]
    assert (details["recipient"], details["reply"], details["window"]) == (
        "uid",
        "zbs_template",
        "cs_window",
    )


def test_a_reply_zalo_refuses_for_a_closed_window_goes_as_the_zbs_template_instead(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    # Within our window, but the simulator answers -230: the user never wrote to this OA.
    result = run(make_adapter(oa_api_url=sim.base_url), reply_with_template())
    assert sim.consultations == []
    [sent] = sim.messages
    assert (sent.user_id, sent.template_id) == (USER, "245101")
    assert result.details["window"] == "-230"  # type: ignore[attr-defined]


def test_a_reply_within_the_window_is_a_consultation_message_even_with_a_zbs_template(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    sim.build_user_text(USER, "TRA CUU 000.00.12.H29-231025-0001")
    result = run(make_adapter(oa_api_url=sim.base_url), reply_with_template())
    assert len(sim.consultations) == 1
    assert sim.messages == []  # the free consultation message, not a paid template
    assert result.details["reply"] == "consultation"  # type: ignore[attr-defined]


def test_after_the_window_without_a_zbs_template_the_reason_says_what_to_configure(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    late = datetime.now(UTC) - timedelta(hours=25)
    with pytest.raises(PermanentFailure) as caught:
        run(make_adapter(oa_api_url=sim.base_url), reply(received_at=late))
    assert caught.value.code == "cs_window"
    assert "no ZBS template" in caught.value.reason
    assert "replies.toml" in caught.value.reason
    assert (sim.consultations, sim.messages) == ([], [])


def test_a_zbs_reply_to_a_malformed_user_id_fails_without_calling_zalo(
    sim: ZaloSimulator, make_adapter: Factory
) -> None:
    late = datetime.now(UTC) - timedelta(hours=25)
    message = replace(reply_with_template(received_at=late), recipient="not-a-user-id")
    with pytest.raises(PermanentFailure) as caught:
        run(make_adapter(oa_api_url=sim.base_url), message)
    assert caught.value.code == "invalid_user_id"
    assert sim.messages == []
