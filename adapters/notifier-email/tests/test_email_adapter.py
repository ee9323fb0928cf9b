"""The email adapter against a real SMTP server (the local catcher), over real sockets.

Nothing in aiosmtplib is patched: failures are the catcher's own SMTP replies.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import MISSING, fields
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pytest
from notifier_email import EmailAdapter, EmailSettings
from notifier_simulators.smtp import SmtpCatcher
from pydantic import ValidationError

from notifier.adapter import (
    AdapterContext,
    OutboundMessage,
    PermanentFailure,
    RecipientKind,
    SendResult,
    TemporaryFailure,
    watching_handover,
)

T = TypeVar("T")

SUBJECT = "Hồ sơ 000.00.12.H29-231025-0001 đã được tiếp nhận"
TEXT = (
    "Kính gửi ông/bà Nguyễn Văn Ánh,\n"
    "Hồ sơ 000.00.12.H29-231025-0001 đã được Bộ phận Một cửa tiếp nhận.\n"
    "Ngày hẹn trả kết quả: 27/10/2025."
)
HTML = "<p>Kính gửi ông/bà <b>Nguyễn Văn Ánh</b>,</p><p>Hồ sơ đã được tiếp nhận.</p>"
RECIPIENT = "nguyen.van.anh@example.vn"
USER, PASSWORD = "notifier", "s3cret-pw"


def _context() -> AdapterContext:
    # Only the fields without defaults (inbox, ...): the email adapter uses none of them.
    required = {
        f.name: None
        for f in fields(AdapterContext)
        if f.default is MISSING and f.default_factory is MISSING
    }
    return AdapterContext(**required)  # type: ignore[arg-type]


def _adapter(port: int, **settings: Any) -> EmailAdapter:
    settings.setdefault("timeout_s", 2.0)
    return EmailAdapter(EmailSettings(host="127.0.0.1", port=port, **settings), _context())


def _message(
    *, subject: str = SUBJECT, recipient: str = RECIPIENT, delivery_id: uuid.UUID | None = None
) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=delivery_id or uuid.uuid4(),
        event_id=uuid.uuid4(),
        channel="email",
        recipient=recipient,
        language="vi",
        parts={"subject": subject, "text": TEXT, "html": HTML},
        dossier_code="000.00.12.H29-231025-0001",
        agency_code="000.00.12.H29",
        status="received",
    )


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def _send_all(adapter: EmailAdapter, *messages: OutboundMessage) -> list[SendResult]:
    """Send one after the other on one loop, then close the adapter whatever happened."""
    try:
        return [await adapter.send(message) for message in messages]
    finally:
        await adapter.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more


@pytest.fixture
def catcher() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as smtp:
        yield smtp


def test_declares_the_adapter_api() -> None:
    assert EmailAdapter.name == "email"
    assert EmailAdapter.channel == "email"
    assert EmailAdapter.recipient_kind is RecipientKind.EMAIL
    assert EmailAdapter.settings_model is EmailSettings
    parts = {part.name: part for part in EmailAdapter.template_parts}
    assert list(parts) == ["subject", "text", "html"]
    assert parts["subject"].max_length == 200
    assert parts["html"].html
    assert not parts["text"].html


def test_registered_as_a_plugin() -> None:
    found = {e.name: e for e in entry_points(group="notifier.adapters")}
    assert found["email"].load() is EmailAdapter


def test_vietnamese_subject_and_bodies_arrive_intact(catcher: SmtpCatcher) -> None:
    _run(_send_all(_adapter(catcher.port), _message()))

    [msg] = catcher.wait_for(1)
    assert msg["Subject"] == SUBJECT
    # On the wire everything is 7-bit: RFC 2047 words in headers, base64/QP bodies.
    assert msg.raw.isascii()
    assert b"Subject: =?utf-8?" in msg.raw
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert text.get_content().replace("\r\n", "\n").rstrip("\n") == TEXT
    assert html.get_content().rstrip("\r\n") == HTML
    [sender] = msg["From"].addresses
    assert sender.display_name == "Cổng Dịch vụ công"
    assert sender.addr_spec == "no-reply@notifier.local"
    assert msg["To"] == RECIPIENT
    assert msg.envelope_from == "no-reply@notifier.local"
    assert msg.envelope_to == (RECIPIENT,)


def test_delivery_id_header_and_stable_message_id(catcher: SmtpCatcher) -> None:
    delivery_id = uuid.uuid4()
    adapter = _adapter(catcher.port)
    first, retry = _run(
        _send_all(adapter, _message(delivery_id=delivery_id), _message(delivery_id=delivery_id))
    )

    msg = catcher.wait_for(2)[0]
    assert msg["X-Notifier-Delivery-Id"] == str(delivery_id)
    assert msg["Message-ID"] == first.provider_message_id
    assert str(delivery_id) in str(first.provider_message_id)
    # A retry of the same delivery keeps its Message-ID, so mailboxes can deduplicate.
    assert retry.provider_message_id == first.provider_message_id
    assert msg["Date"].datetime is not None
    assert not first.delivered


def test_twenty_messages_over_a_pool_of_two_use_two_connections(catcher: SmtpCatcher) -> None:
    adapter = _adapter(catcher.port, pool_size=2)

    async def burst() -> list[SendResult]:
        try:
            return await asyncio.gather(*(adapter.send(_message()) for _ in range(20)))
        finally:
            await adapter.close()

    results = _run(burst())

    assert len(results) == 20
    messages = catcher.wait_for(20)
    assert len(messages) == 20
    assert 1 <= catcher.connections <= 2
    assert {m.connection_id for m in messages} <= {1, 2}


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_smtp_4xx_is_a_temporary_failure_with_its_code(catcher: SmtpCatcher, stage: str) -> None:
    catcher.fail_next(1, code=451, message="4.3.0 Mailbox busy, try later", stage=stage)  # type: ignore[arg-type]
    adapter = _adapter(catcher.port)

    async def scenario() -> SendResult:
        try:
            with pytest.raises(TemporaryFailure) as failure:
                await adapter.send(_message())
            assert failure.value.code == "451"
            assert "Mailbox busy" in failure.value.reason
            return await adapter.send(_message())  # the pool recovers
        finally:
            await adapter.close()

    assert _run(scenario()).provider_message_id
    assert len(catcher.wait_for(1)) == 1
    assert catcher.connections == 2  # the session that failed was not reused


def test_recipient_refused_550_is_permanent_and_does_not_leak_the_address(
    catcher: SmtpCatcher,
) -> None:
    catcher.fail_next(1, code=550, message=f"5.1.1 <{RECIPIENT}>: Recipient address rejected")

    with pytest.raises(PermanentFailure) as failure:
        _run(_send_all(_adapter(catcher.port), _message()))

    assert failure.value.code == "550"
    assert not failure.value.operator_alert
    assert "Recipient address rejected" in failure.value.reason
    assert RECIPIENT not in str(failure.value)
    # aiosmtplib's exception names the recipient: it must not ride along as the cause.
    assert failure.value.__cause__ is None
    assert failure.value.__suppress_context__
    assert catcher.messages == []


def test_server_not_listening_is_a_temporary_failure() -> None:
    with pytest.raises(TemporaryFailure) as failure:
        _run(_send_all(_adapter(_closed_port()), _message()))
    assert "unreachable" in failure.value.reason


def test_server_too_slow_is_a_temporary_failure() -> None:
    with SmtpCatcher(latency_s=1.0) as slow, pytest.raises(TemporaryFailure) as failure:
        _run(_send_all(_adapter(slow.port, timeout_s=0.2), _message()))
    assert "timed out" in failure.value.reason


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_line_breaks_in_the_subject_cannot_inject_headers(
    catcher: SmtpCatcher, newline: str
) -> None:
    subject = f"Hi{newline}Bcc: evil@example.com"
    _run(_send_all(_adapter(catcher.port), _message(subject=subject)))

    [msg] = catcher.wait_for(1)
    assert msg["Bcc"] is None
    assert msg.envelope_to == (RECIPIENT,)
    assert msg["Subject"] == "Hi Bcc: evil@example.com"
    assert b"\nBcc:" not in msg.raw


def test_a_malformed_recipient_is_permanent_and_never_reaches_the_server(
    catcher: SmtpCatcher,
) -> None:
    bad = "nguyen.van.anh@example.vn\r\nRCPT TO:<evil@example.com>"
    with pytest.raises(PermanentFailure) as failure:
        _run(_send_all(_adapter(catcher.port), _message(recipient=bad)))
    assert not failure.value.operator_alert
    assert "nguyen.van.anh" not in str(failure.value)
    assert catcher.connections == 0


def test_auth_login_with_configured_credentials() -> None:
    with SmtpCatcher(auth=(USER, PASSWORD)) as smtp:
        _run(_send_all(_adapter(smtp.port, username=USER, password=PASSWORD), _message()))
        [msg] = smtp.wait_for(1)
    assert msg.authenticated_as == USER


def test_wrong_password_is_permanent_and_alerts_the_operator() -> None:
    with SmtpCatcher(auth=(USER, PASSWORD)) as smtp:
        with pytest.raises(PermanentFailure) as failure:
            _run(_send_all(_adapter(smtp.port, username=USER, password="wrong"), _message()))
        assert smtp.messages == []
    assert failure.value.code == "535"
    assert failure.value.operator_alert
    assert "wrong" not in str(failure.value)


def test_missing_credentials_where_auth_is_required_alert_the_operator() -> None:
    with SmtpCatcher(auth=(USER, PASSWORD)) as smtp, pytest.raises(PermanentFailure) as failure:
        _run(_send_all(_adapter(smtp.port), _message()))
    assert failure.value.code == "530"
    assert failure.value.operator_alert


def test_starttls_required_but_not_offered_alerts_the_operator(catcher: SmtpCatcher) -> None:
    with pytest.raises(PermanentFailure) as failure:
        _run(_send_all(_adapter(catcher.port, security="starttls"), _message()))
    assert failure.value.operator_alert
    assert catcher.messages == []


@pytest.mark.parametrize(
    "bad",
    [
        {"username": USER},
        {"password": PASSWORD},
        {"pool_size": 0},
        {"pool_size": 65},
        {"security": "ssl"},
        {"timeout_s": 0},
        {"from_address": "not an address"},
        {"from_name": "Cổng\r\nBcc: evil@example.com"},
        {"smtp_host": "typo.example.vn"},
    ],
)
def test_settings_validation_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EmailSettings(**bad)


def test_settings_defaults_and_secret_password() -> None:
    settings = EmailSettings(username=USER, password=PASSWORD, from_address="hcc@hanoi.gov.vn")
    assert (settings.host, settings.port, settings.security) == ("127.0.0.1", 25, "none")
    assert (settings.pool_size, settings.timeout_s, settings.validate_certs) == (4, 20, True)
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())


def test_close_quits_the_pooled_connections(catcher: SmtpCatcher) -> None:
    adapter = _adapter(catcher.port, pool_size=3)
    seen: dict[str, int] = {}

    async def scenario() -> None:
        await asyncio.gather(*(adapter.send(_message()) for _ in range(6)))
        catcher.wait_for(6)
        seen["opened"], seen["open"] = catcher.connections, catcher.active_connections
        seen["quits"] = catcher.quits
        await adapter.close()

    _run(scenario())

    assert 1 <= seen["opened"] <= 3
    assert seen["open"] == seen["opened"]  # kept open for reuse until close()
    assert seen["quits"] == 0
    catcher.wait_for_idle(timeout=2.0)
    assert catcher.quits == seen["opened"]


# Dropping a loop without closing the adapter first leaves a transport that can no longer
# be closed properly (its loop is gone); the adapter shuts the socket down and moves on.
@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_new_event_loop_gets_new_connections(catcher: SmtpCatcher) -> None:
    adapter = _adapter(catcher.port)
    _run(adapter.send(_message()))  # asyncio.run then closes the pool's loop
    _run(_send_all(adapter, _message()))

    assert len(catcher.wait_for(2)) == 2
    assert catcher.connections == 2
    catcher.wait_for_idle(timeout=2.0)  # the abandoned session is hung up on, too
    gc.collect()  # release the abandoned transport here, under this test's filters


def test_a_connection_the_server_dropped_is_replaced(catcher: SmtpCatcher) -> None:
    adapter = _adapter(catcher.port)

    async def scenario() -> None:
        try:
            await adapter.send(_message())
            catcher.drop_connections()
            await asyncio.sleep(0.05)  # let the client notice the hang-up
            await adapter.send(_message())
        finally:
            await adapter.close()

    _run(scenario())
    assert len(catcher.wait_for(2)) == 2
    assert catcher.connections == 2


def test_a_stale_pooled_connection_is_retried_once_on_a_new_one(catcher: SmtpCatcher) -> None:
    adapter = _adapter(catcher.port)

    async def scenario() -> None:
        try:
            await adapter.send(_message())
            # What a relay says to a session that idled too long: 421, closing channel.
            catcher.fail_next(1, code=421, message="4.4.2 Idle timeout", stage="mail")
            await adapter.send(_message())  # no failure: reconnected transparently
        finally:
            await adapter.close()

    _run(scenario())
    assert len(catcher.wait_for(2)) == 2
    assert catcher.connections == 2


def test_421_on_a_fresh_connection_is_not_retried(catcher: SmtpCatcher) -> None:
    catcher.fail_next(2, code=421, message="4.3.2 Shutting down", stage="mail")
    with pytest.raises(TemporaryFailure) as failure:
        _run(_send_all(_adapter(catcher.port), _message()))
    assert failure.value.code == "421"
    assert catcher.connections == 1


def test_health_reports_the_relay(catcher: SmtpCatcher) -> None:
    async def check(adapter: EmailAdapter) -> tuple[bool, str]:
        try:
            health = await adapter.health()
        finally:
            await adapter.close()
        return health.ok, health.detail

    assert _run(check(_adapter(catcher.port)))[0]
    ok, detail = _run(check(_adapter(_closed_port())))
    assert not ok
    assert "unreachable" in detail


def test_a_lost_answer_to_data_is_maybe_sent_and_never_repeated_on_a_new_session(
    catcher: SmtpCatcher,
) -> None:
    # The relay keeps the message but hangs up before its 250: the adapter cannot know
    # it was taken, so it says "maybe sent" and must not retry it on a fresh session.
    adapter = _adapter(catcher.port)

    async def scenario() -> None:
        try:
            await adapter.send(_message())  # a pooled session, reused below
            catcher.hang_up_after_data(1)
            with pytest.raises(TemporaryFailure) as failure:
                await adapter.send(_message())
            assert failure.value.maybe_sent
            assert failure.value.code == "smtp-no-answer-to-data"
        finally:
            await adapter.close()

    _run(scenario())
    assert len(catcher.wait_for(2)) == 2
    catcher.wait_for_idle(timeout=2.0)
    assert len(catcher.messages) == 2  # the held message reached the relay once only


def test_a_refusal_before_data_is_not_maybe_sent(catcher: SmtpCatcher) -> None:
    catcher.fail_next(1, code=451, stage="rcpt")
    with pytest.raises(TemporaryFailure) as failure:
        _run(_send_all(_adapter(catcher.port), _message()))
    assert not failure.value.maybe_sent
    assert catcher.messages == []


def test_the_handover_is_reported_only_once_the_relay_took_the_recipient(
    catcher: SmtpCatcher,
) -> None:
    # The core cuts a send at its timeout; before the handover the cut is a plain
    # temporary failure (nothing left), after it the send may have reached the relay.
    assert EmailAdapter.reports_handover
    adapter = _adapter(catcher.port)
    catcher.fail_next(1, code=451, stage="rcpt")

    async def scenario() -> tuple[bool, bool]:
        try:
            with watching_handover() as refused, pytest.raises(TemporaryFailure):
                await adapter.send(_message())
            with watching_handover() as taken:
                await adapter.send(_message())
            return refused.reached, taken.reached
        finally:
            await adapter.close()

    assert _run(scenario()) == (False, True)
