"""The webhook adapter's own behaviour, over real HTTP to the verifying app of conftest.py:
what the app receives, how each answer is classified, receipts and key rotation."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from notifier_webhook import WebhookAdapter, WebhookSettings, sign, verify
from notifier_webhook.signing import BadSignature

from notifier.adapter import (
    InvalidReceipt,
    OutboundMessage,
    PermanentFailure,
    ReceiptRequest,
    SendResult,
    TemporaryFailure,
)
from notifier.testing import LocalHttpServer, Reply, make_context, run, sample_message

ACCOUNT = "acc-7731-hanoi"


def adapter_for(app: Any, **settings: Any) -> WebhookAdapter:
    values: dict[str, Any] = {"url": app.url, "secret": app.secret, "timeout_s": 0.5}
    values.update(settings)
    return WebhookAdapter(WebhookSettings(**values), make_context())


def message(**overrides: Any) -> OutboundMessage:
    overrides.setdefault("recipient", ACCOUNT)
    return sample_message(WebhookAdapter, **overrides)


async def send_all(adapter: WebhookAdapter, *messages: OutboundMessage) -> list[SendResult]:
    try:
        return [await adapter.send(m) for m in messages]
    finally:
        await adapter.close()


def failure_of(adapter: WebhookAdapter, msg: OutboundMessage | None = None) -> Exception:
    with pytest.raises((TemporaryFailure, PermanentFailure)) as caught:
        run(send_all(adapter, msg or message()))
    return caught.value


def test_the_app_receives_a_signed_json_document(app: Any) -> None:
    msg = message(status="received", language="vi")
    [result] = run(send_all(adapter_for(app), msg))

    [request] = app.server.requests
    assert request.status == 202  # the app's own signature check passed
    assert request.method == "POST"
    assert request.path == "/notify"
    assert request.header("content-type") == "application/json; charset=utf-8"
    assert request.header("idempotency-key") == str(msg.delivery_id)
    assert request.json() == {
        "delivery_id": str(msg.delivery_id),
        "event_id": str(msg.event_id),
        "account_id": ACCOUNT,
        "dossier_code": msg.dossier_code,
        "agency_code": msg.agency_code,
        "status": "received",
        "language": "vi",
        "title": msg.parts["title"],
        "body": msg.parts["body"],
        "link": msg.parts["link"],
    }
    # Vietnamese travels as UTF-8, not \\u escapes, and the signature covers those bytes.
    assert "đã được tiếp nhận".encode() in request.body
    stamp = request.header("x-notifier-timestamp")
    assert stamp is not None
    assert abs(int(stamp) - time.time()) < 5
    expected = hmac.new(app.secret.encode(), f"{stamp}.".encode() + request.body, hashlib.sha256)
    assert request.header("x-notifier-signature") == "sha256=" + expected.hexdigest()
    assert result.provider_message_id == "push-1"
    assert result.details == {"http_status": 202}
    assert not result.delivered


def test_provider_id_from_a_header_when_the_body_has_none(app: Any) -> None:
    app.server.reply_next(Reply(200, b"", {"X-Message-Id": "fcm-0:1764"}))
    [result] = run(send_all(adapter_for(app), message()))
    assert result.provider_message_id == "fcm-0:1764"


def test_an_empty_link_is_null_and_long_parts_are_clipped(app: Any) -> None:
    parts = {"title": "T" * 150, "body": "B" * 700, "link": ""}
    run(send_all(adapter_for(app), message(parts=parts)))
    document = app.server.last_request.json()
    assert document["link"] is None
    assert len(document["title"]) == 120
    assert document["title"].endswith("…")
    assert len(document["body"]) == 500
    assert document["body"].endswith("…")


def test_a_wrong_secret_is_refused_by_the_app_and_alerts_the_operator(app: Any) -> None:
    adapter = adapter_for(app, secret="not-the-apps-secret-but-32-chars-long")
    failure = failure_of(adapter)
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert  # our configuration: the worker fails over
    assert failure.code == "http-401"
    assert app.server.last_request.status == 401


@pytest.mark.parametrize(
    ("status", "kind", "alert"),
    [
        (503, TemporaryFailure, None),
        (500, TemporaryFailure, None),
        (408, TemporaryFailure, None),
        (429, TemporaryFailure, None),
        (400, PermanentFailure, False),
        (410, PermanentFailure, False),
        (422, PermanentFailure, False),
        (403, PermanentFailure, True),
        (404, PermanentFailure, True),
        (302, PermanentFailure, True),
    ],
)
def test_answers_are_classified(app: Any, status: int, kind: type, alert: bool | None) -> None:
    app.server.fail_next(status, headers={"Location": "https://elsewhere.example.vn/"})
    failure = failure_of(adapter_for(app))
    assert type(failure) is kind
    assert failure.code == f"http-{status}"  # type: ignore[attr-defined]
    if alert is not None:
        assert failure.operator_alert is alert  # type: ignore[attr-defined]
    assert ACCOUNT not in str(failure)


def test_retry_after_is_honoured_in_seconds_and_as_a_date(app: Any) -> None:
    app.server.fail_next(429, headers={"Retry-After": "120"})
    failure = failure_of(adapter_for(app))
    assert isinstance(failure, TemporaryFailure)
    assert failure.retry_after_s == 120

    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    app.server.fail_next(503, headers={"Retry-After": later})
    failure = failure_of(adapter_for(app))
    assert isinstance(failure, TemporaryFailure)
    assert failure.retry_after_s is not None
    assert 80 <= failure.retry_after_s <= 90


def test_an_app_that_hangs_is_a_temporary_failure_within_the_timeout(app: Any) -> None:
    app.server.hang_next(seconds=5)
    started = time.monotonic()
    failure = failure_of(adapter_for(app, timeout_s=0.3))
    assert isinstance(failure, TemporaryFailure)
    assert "did not answer" in failure.reason
    assert failure.maybe_sent  # the app may have the notification: no failover
    assert time.monotonic() - started < 2


def test_a_dropped_connection_and_no_listener_are_temporary(app: Any, closed_port: int) -> None:
    app.server.drop_next()
    dropped = failure_of(adapter_for(app))
    assert isinstance(dropped, TemporaryFailure)
    assert dropped.maybe_sent  # hung up after reading the request: it may have it
    unreachable = adapter_for(app, url=f"http://127.0.0.1:{closed_port}/notify")
    failure = failure_of(unreachable)
    assert isinstance(failure, TemporaryFailure)
    assert "unreachable" in failure.reason
    assert not failure.maybe_sent  # never connected: nothing was sent


def test_connections_are_pooled_and_closed(app: Any) -> None:
    run(send_all(adapter_for(app), *(message() for _ in range(5))))
    assert len(app.server.requests) == 5
    assert app.server.connections == 1  # one kept-alive connection for all five
    app.server.wait_for_idle(timeout=2)  # and close() hung it up


def test_health(app: Any, closed_port: int) -> None:
    async def health(adapter: WebhookAdapter) -> tuple[bool, str]:
        try:
            result = await adapter.health()
        finally:
            await adapter.close()
        return result.ok, result.detail

    assert run(health(adapter_for(app)))[0]
    ok, detail = run(health(adapter_for(app, url=f"http://127.0.0.1:{closed_port}/")))
    assert not ok
    assert "unreachable" in detail


# -- settings -------------------------------------------------------------------------


def test_https_is_required_except_to_loopback_or_when_allowed() -> None:
    secret = "s" * 32
    WebhookSettings(url="https://app.tinh.gov.vn/notify", secret=secret)
    WebhookSettings(url="http://localhost:8080/notify", secret=secret)
    WebhookSettings(url="http://10.1.2.3/notify", secret=secret, allow_plain_http=True)
    with pytest.raises(ValueError, match="https"):
        WebhookSettings(url="http://10.1.2.3/notify", secret=secret)


# -- receipts ---------------------------------------------------------------------------


def receipt(secret: str, document: Any, *, age_s: float = 0) -> ReceiptRequest:
    body = json.dumps(document).encode()
    stamp = int(time.time() - age_s)
    return ReceiptRequest(
        method="POST",
        headers={
            "x-notifier-timestamp": str(stamp),
            "x-notifier-signature": "sha256=" + sign(secret, stamp, body),
        },
        query={},
        body=body,
        received_at=time.time(),
    )


SETTINGS = WebhookSettings(url="https://app.tinh.gov.vn/notify", secret="n" * 40)


def test_a_batch_of_receipts_with_a_scrubbed_error() -> None:
    ok, failed = uuid.uuid4(), uuid.uuid4()
    document = {
        "receipts": [
            {"delivery_id": str(ok), "delivered": True},
            {
                "delivery_id": str(failed),
                "delivered": False,
                "error": "device of 0901888484 unregistered",
                "error_code": "unregistered",
            },
        ]
    }
    first, second = WebhookAdapter.parse_receipt(SETTINGS, receipt("n" * 40, document))
    assert (first.delivery_id, first.delivered) == (ok, True)
    assert (second.delivery_id, second.delivered) == (failed, False)
    assert second.error is not None
    assert "0901888484" not in second.error
    assert second.error_code == "unregistered"


def test_receipts_signed_with_the_previous_secret_are_accepted_while_rotating() -> None:
    rotating = WebhookSettings(
        url=SETTINGS.url, secret="m" * 40, previous_secret=SETTINGS.secret.get_secret_value()
    )
    document = {"delivery_id": str(uuid.uuid4()), "delivered": True}
    assert WebhookAdapter.parse_receipt(rotating, receipt("n" * 40, document))
    assert WebhookAdapter.parse_receipt(rotating, receipt("m" * 40, document))
    with pytest.raises(InvalidReceipt, match="does not match"):
        WebhookAdapter.parse_receipt(SETTINGS, receipt("m" * 40, document))


@pytest.mark.parametrize(
    ("document", "age_s", "why"),
    [
        ({"delivery_id": "not-a-uuid", "delivered": True}, 0, "delivery_id"),
        ({"delivery_id": str(uuid.UUID(int=1))}, 0, "delivered"),
        ({"delivery_id": str(uuid.UUID(int=1)), "delivered": "yes"}, 0, "delivered"),
        ({"receipts": [{"delivered": True}] * 101}, 0, "at most 100"),
        ({"delivery_id": str(uuid.UUID(int=1)), "delivered": True}, 301, "window"),
        ({"delivery_id": str(uuid.UUID(int=1)), "delivered": True}, -301, "window"),
    ],
)
def test_receipts_that_are_refused(document: Any, age_s: float, why: str) -> None:
    with pytest.raises(InvalidReceipt, match=why):
        WebhookAdapter.parse_receipt(SETTINGS, receipt("n" * 40, document, age_s=age_s))


def test_verify_checks_form_window_and_key() -> None:
    body = b'{"a":1}'
    good = "sha256=" + sign("k" * 32, 1_764_124_200, body)
    assert (
        verify(
            ["k" * 32],
            timestamp="1764124200",
            signature=good,
            body=body,
            now=1_764_124_260,
            max_age_s=300,
        )
        == 1_764_124_200
    )
    for timestamp, signature, now in [
        ("1764124200", good, 1_764_124_200 + 301),  # stale
        ("1764124200", good.removeprefix("sha256="), 1_764_124_200),  # no prefix
        ("1764124200.5", good, 1_764_124_200),  # not whole seconds
        (None, good, 1_764_124_200),
    ]:
        with pytest.raises(BadSignature):
            verify(
                ["k" * 32],
                timestamp=timestamp,
                signature=signature,
                body=body,
                now=now,
                max_age_s=300,
            )


def test_a_server_can_refuse_with_the_real_verifier(app: Any) -> None:
    """The README's verification recipe, run by a server: a good request passes it."""
    seen: list[str] = []

    def check(request: Any) -> Reply | None:
        try:
            verify(
                [app.secret],
                timestamp=request.header("x-notifier-timestamp"),
                signature=request.header("x-notifier-signature"),
                body=request.body,
                now=time.time(),
                max_age_s=300,
            )
        except BadSignature as exc:
            seen.append(str(exc))
            return Reply(401)
        seen.append("ok")
        return None

    with LocalHttpServer(check=check) as server:
        run(send_all(adapter_for(app, url=server.url + "/n"), message()))
    assert seen == ["ok"]
