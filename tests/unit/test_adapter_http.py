"""The adapter kit's HTTP layer (notifier.adapter_http) against a real local server: the
one place where httpx's outcomes become notifier's failures."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from notifier.adapter import PermanentFailure, TemporaryFailure
from notifier.adapter_http import (
    CONNECT_FAILED,
    CONNECTION_LOST,
    TIMEOUT,
    AdapterHttp,
    parse_retry_after,
    request,
    request_sync,
    status_failure,
)
from notifier.testing import LocalHttpServer, Reply, make_context, run


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _outcome(url: str, *, timeout_s: float = 2.0, **options: object) -> httpx.Response:
    async def exchange() -> httpx.Response:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            return await request(client, "POST", url, provider="Acme", json={"a": 1}, **options)  # type: ignore[arg-type]

    return run(exchange())


def _failure(url: str, **kwargs: object) -> TemporaryFailure:
    with pytest.raises(TemporaryFailure) as caught:
        _outcome(url, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_nobody_listening_is_temporary_and_nothing_was_sent() -> None:
    failure = _failure(f"http://127.0.0.1:{_closed_port()}/send")
    assert failure.code == CONNECT_FAILED
    assert failure.maybe_sent is False


def test_no_answer_after_the_request_went_out_may_have_been_sent() -> None:
    with LocalHttpServer(default=Reply(200, {"ok": True}, delay_s=30)) as server:
        failure = _failure(server.url + "/send", timeout_s=0.3)
    assert failure.code == TIMEOUT
    assert failure.maybe_sent is True
    assert "Acme" in failure.reason


def test_a_connection_dropped_after_the_request_may_have_been_sent() -> None:
    with LocalHttpServer() as server:
        server.drop_next()
        failure = _failure(server.url + "/send")
        assert server.requests[0].json() == {"a": 1}  # it did get the whole request
    assert failure.code == CONNECTION_LOST
    assert failure.maybe_sent is True


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_throttling_and_server_errors_are_temporary_with_http_codes(status: int) -> None:
    with LocalHttpServer() as server:
        server.fail_next(status, headers={"Retry-After": "7"})
        failure = _failure(server.url + "/send")
    assert failure.code == f"http-{status}"
    assert failure.retry_after_s == 7.0
    assert failure.maybe_sent is False


def test_a_providers_own_reset_header_is_read_through_the_hook() -> None:
    def reset(response: httpx.Response) -> float | None:
        return parse_retry_after(response.headers.get("x-rate-limit-reset"))

    with LocalHttpServer() as server:
        server.fail_next(429, headers={"X-Rate-Limit-Reset": "42"})
        failure = _failure(server.url + "/send", retry_after_hook=reset)
    assert (failure.code, failure.retry_after_s) == ("http-429", 42.0)


def test_other_answers_are_returned_for_the_adapter_to_read() -> None:
    with LocalHttpServer() as server:
        server.fail_next(400, body={"code": "BAD_NUMBER"})
        response = _outcome(server.url + "/send")
    assert response.status_code == 400
    assert response.json() == {"code": "BAD_NUMBER"}


def test_the_synchronous_request_maps_the_same_way() -> None:
    with LocalHttpServer() as server, httpx.Client(timeout=2.0) as client:
        server.fail_next(503)
        with pytest.raises(TemporaryFailure) as caught:
            request_sync(client, "POST", server.url + "/token", provider="Acme OAuth")
        assert caught.value.code == "http-503"
        assert request_sync(client, "GET", server.url + "/token", provider="x").status_code == 200


def test_retry_after_is_read_in_seconds_or_as_a_date_and_bounded() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("999999") == 3600.0  # at most an hour
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    now = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == 90.0


@pytest.mark.parametrize(
    ("status", "kind", "alert"),
    [
        (401, PermanentFailure, True),
        (403, PermanentFailure, True),
        (404, PermanentFailure, True),
        (302, PermanentFailure, True),
        (400, PermanentFailure, True),
        (408, TemporaryFailure, None),
        (425, TemporaryFailure, None),
        (200, TemporaryFailure, None),  # an answer the adapter could not read
    ],
)
def test_an_unexplained_answer_is_read_by_its_status(
    status: int, kind: type, alert: bool | None
) -> None:
    failure = status_failure(httpx.Response(status), "Acme")
    assert type(failure) is kind
    assert failure.code == f"http-{status}"
    if alert is not None:
        assert isinstance(failure, PermanentFailure)
        assert failure.operator_alert is alert


def test_a_refusal_about_the_message_is_not_an_operator_alert_when_said_so() -> None:
    failure = status_failure(httpx.Response(422), "the app", refusal_is_ours=False)
    assert isinstance(failure, PermanentFailure)
    assert failure.operator_alert is False


def test_the_pooled_client_is_reused_and_closed() -> None:
    with LocalHttpServer() as server:
        http = AdapterHttp(make_context(), "Acme", timeout_s=2.0)

        async def twice() -> None:
            first = http.client()
            await http.request("POST", server.url + "/send", json={})
            await http.request("POST", server.url + "/send", json={})
            assert http.client() is first
            await http.aclose()
            await http.aclose()  # idempotent

        run(twice())
        assert server.connections == 1
        server.wait_for_idle(timeout=2)
