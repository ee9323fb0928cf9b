"""Replies to a user's text to the OA: the consultation message, within Zalo's window."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
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
