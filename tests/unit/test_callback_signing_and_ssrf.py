"""Signed callbacks: the Standard Webhooks signature, the SSRF rules (each one), the status
message's reading, and the backoff with Retry-After."""

from __future__ import annotations

import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook, WebhookVerificationError

from notifier.adapter import TemporaryFailure
from notifier.callback_http import (
    Address,
    DestinationPolicy,
    DestinationRefused,
    post_callback,
)
from notifier.pipeline.callbacks import (
    InvalidStatusMessage,
    StatusIntake,
    parse_status,
    retry_delay,
)
from notifier.settings import CallbackSettings
from notifier.store.callbacks import IncomingStatus
from notifier.webhooks import InvalidSecret, check_secret, new_secret, sign, signed_headers
from tests.callback_receiver import CallbackReceiver


def _resolver(*addresses: str):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[Address]:
        return [ipaddress.ip_address(a) for a in addresses]

    return resolve


# -- signing ------------------------------------------------------------------------------


def test_the_signature_matches_the_standard_webhooks_published_example() -> None:
    # The example of the Standard Webhooks specification's reference libraries.
    signature = sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_receiver_holding_either_secret_during_a_rotation_verifies_the_callback() -> None:
    old, new = new_secret(), new_secret()
    body = '{"schema": "notifier.status.v1", "id": "s-1"}'
    headers = signed_headers("s-1", int(time.time()), body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers)["id"] == "s-1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_a_changed_body_or_id_fails_verification() -> None:
    secret = new_secret()
    headers = signed_headers("s-1", int(time.time()), '{"a": 1}', [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify('{"a": 2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify('{"a": 1}', {**headers, "webhook-id": "s-2"})


def test_new_secrets_follow_the_whsec_format_and_bad_ones_are_refused() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert check_secret(secret) == secret
    assert new_secret() != secret
    for bad in ("abc", "whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(InvalidSecret):
            check_secret(bad)


# -- the SSRF rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6 reaches the IPv4 address
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("10.1.2.3", "private"),
        ("192.168.1.10", "private"),
        ("fd12:3456::1", "private"),
    ],
)
def test_a_callback_to_a_non_public_address_is_refused_by_default(address: str, rule: str) -> None:
    policy = DestinationPolicy.of([], allow_http=False, resolver=_resolver(address))
    with pytest.raises(DestinationRefused) as refused:
        policy.resolve(policy.check_url("https://hooks.example.vn/x"))
    assert rule in refused.value.reason
    assert refused.value.code == "destination-refused"


def test_a_public_address_over_https_is_allowed() -> None:
    policy = DestinationPolicy.of([], allow_http=False, resolver=_resolver("203.119.8.1"))
    url = policy.check_url("https://hooks.example.vn/x")
    assert policy.resolve(url) == ipaddress.ip_address("203.119.8.1")


def test_an_allowed_network_opens_private_and_loopback_addresses_inside_it_only() -> None:
    policy = DestinationPolicy.of(["10.20.0.0/16", "127.0.0.1/32"], allow_http=False)
    assert policy.address_refusal(ipaddress.ip_address("10.20.5.5")) is None
    assert policy.address_refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.address_refusal(ipaddress.ip_address("10.21.0.1")) is not None
    assert policy.address_refusal(ipaddress.ip_address("127.0.0.2")) is not None


def test_a_metadata_address_is_refused_inside_a_wide_allowed_range_unless_named_exactly() -> None:
    metadata = ipaddress.ip_address("169.254.169.254")
    wide = DestinationPolicy.of(["169.254.0.0/16"], allow_http=False)
    assert "metadata" in (wide.address_refusal(metadata) or "")
    exact = DestinationPolicy.of(["169.254.169.254/32"], allow_http=False)
    assert exact.address_refusal(metadata) is None


def test_every_resolved_address_is_checked_not_only_the_first() -> None:
    policy = DestinationPolicy.of(
        [], allow_http=False, resolver=_resolver("203.119.8.1", "127.0.0.1")
    )
    with pytest.raises(DestinationRefused, match="loopback"):
        policy.resolve(policy.check_url("https://hooks.example.vn/x"))


def test_plain_http_is_refused_unless_allowed_and_then_only_to_an_allowed_network() -> None:
    strict = DestinationPolicy.of(["10.0.0.0/8"], allow_http=False, resolver=_resolver("10.0.0.9"))
    with pytest.raises(DestinationRefused, match="https"):
        strict.check_url("http://tthc.local/hooks")
    lax = DestinationPolicy.of(
        ["10.0.0.0/8"], allow_http=True, resolver=_resolver("10.0.0.9", "203.119.8.1")
    )
    with pytest.raises(DestinationRefused, match="plain http"):
        lax.resolve(lax.check_url("http://tthc.local/hooks"))
    private_only = DestinationPolicy.of(
        ["10.0.0.0/8"], allow_http=True, resolver=_resolver("10.0.0.9")
    )
    assert private_only.resolve(private_only.check_url("http://tthc.local/hooks"))


@pytest.mark.parametrize(
    "url",
    ["ftp://hooks.example.vn/x", "https://user:pw@hooks.example.vn/x", "https:///x", "not a url"],
)
def test_a_callback_url_of_another_scheme_with_credentials_or_no_host_is_refused(
    url: str,
) -> None:
    with pytest.raises(DestinationRefused):
        DestinationPolicy.of([], allow_http=True).check_url(url)


def test_the_request_goes_to_the_address_checked_at_send_time_not_a_second_lookup() -> None:
    """DNS rebinding: the name answers an allowed address, then one that is not. Each
    send looks the name up once and connects to the address it checked: the first
    reaches the receiver (the name itself resolves nowhere), the second is refused
    before any connection."""
    answers = iter(["127.0.0.1", "127.0.0.2"])
    looked_up: list[str] = []

    def rebinding(host: str, port: int) -> list[Address]:
        looked_up.append(host)
        return [ipaddress.ip_address(next(answers))]

    secret = new_secret()
    with CallbackReceiver([secret]) as receiver, httpx.Client() as client:
        policy = DestinationPolicy.of(["127.0.0.1/32"], allow_http=True, resolver=rebinding)
        url = f"http://receiver.invalid:{receiver.port}{receiver.path}"
        body = '{"id": "s-1"}'
        headers = signed_headers("s-1", int(time.time()), body, [secret])
        answer = post_callback(client, policy, url, body.encode(), headers)
        assert answer.status_code == 200
        assert receiver.received.headers[0]["host"] == f"receiver.invalid:{receiver.port}"
        with pytest.raises(DestinationRefused, match=r"127\.0\.0\.2 is a loopback"):
            post_callback(client, policy, url, body.encode(), headers)
        assert len(receiver.received.headers) == 1
    assert looked_up == ["receiver.invalid", "receiver.invalid"]


def test_a_redirect_is_not_followed() -> None:
    secret = new_secret()
    with CallbackReceiver([secret]) as receiver, httpx.Client() as client:
        receiver.redirect_to = f"http://127.0.0.1:{receiver.port}/elsewhere"
        policy = DestinationPolicy.of(["127.0.0.1/32"], allow_http=True)
        body = '{"id": "s-1"}'
        headers = signed_headers("s-1", int(time.time()), body, [secret])
        answer = post_callback(client, policy, receiver.url, body.encode(), headers)
        assert answer.status_code == 302
        assert [h.get("path") for h in receiver.received.headers] == [None]


def test_a_429_from_the_receiver_is_a_temporary_failure_with_its_retry_after() -> None:
    secret = new_secret()
    with CallbackReceiver([secret]) as receiver, httpx.Client() as client:
        receiver.answer(429, "7")
        policy = DestinationPolicy.of(["127.0.0.1/32"], allow_http=True)
        body = '{"id": "s-1"}'
        headers = signed_headers("s-1", int(time.time()), body, [secret])
        with pytest.raises(TemporaryFailure) as failure:
            post_callback(client, policy, receiver.url, body.encode(), headers)
    assert failure.value.code == "http-429"
    assert failure.value.retry_after_s == 7.0


# -- the status message and the backoff ---------------------------------------------------


def test_a_status_message_is_read_and_its_body_kept_byte_for_byte() -> None:
    body = (
        b'{"schema": "notifier.status.v1", "id": "01J", "type": "delivery.delivered",'
        b' "agency": "H29", "sequence": 3, "note": "Vi\xe1\xbb\x87t"}'
    )
    status = parse_status(body)
    assert (status.id, status.type, status.agency, status.sequence) == (
        "01J",
        "delivery.delivered",
        "H29",
        3,
    )
    assert status.body.encode() == body


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",
        b"[1, 2]",
        b'{"schema": "other", "id": "1", "type": "t"}',
        b'{"schema": "notifier.status.v1", "type": "t"}',
        b'{"schema": "notifier.status.v1", "id": "1", "type": "t", "agency": 5}',
        b'{"schema": "notifier.status.v1", "id": "1", "type": "t", "sequence": "2"}',
        b'{"schema": "notifier.status.v1", "id": "1", "type": "t", "sequence": true}',
        b'{"schema": "notifier.status.v1", "id": "1", "type": "t", "sequence": %d}' % 2**63,
        b'{"schema": "notifier.status.v1", "id": "1", "type": "t", "sequence": -1}',
        b'{"schema": "notifier.status.v1", "id": "1\\u0000", "type": "t"}',
        b'{"schema": "notifier.status.v1", "id": "1", "type": "t", "agency": "H\\n29"}',
        b'{"schema": "notifier.status.v1", "id": "1", "type": "' + b"t" * 65 + b'"}',
        b"x" * (65 * 1024),
    ],
)
def test_a_message_that_is_not_a_status_message_is_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(InvalidStatusMessage):
        parse_status(body)


def test_backoff_doubles_up_to_its_ceiling_and_jitter_takes_it_down_to_half_at_most() -> None:
    settings = CallbackSettings(min_backoff_s=2, max_backoff_s=30)
    assert [retry_delay(n, settings, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5, 9)] == [
        2,
        4,
        8,
        16,
        30,
        30,
    ]
    assert retry_delay(3, settings, rng=lambda: 0.0) == 4  # half of 8
    assert retry_delay(3, settings, rng=lambda: 0.5) == 6


def test_a_retry_after_replaces_the_backoff_in_either_form() -> None:
    settings = CallbackSettings(min_backoff_s=2, max_backoff_s=30)
    assert retry_delay(1, settings, retry_after_s=120.0) == 120.0
    from notifier.adapter_http import parse_retry_after

    now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    http_date = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(http_date, now=now.timestamp()) == 90.0
    assert parse_retry_after("45", now=now.timestamp()) == 45.0


# -- the intake's acks --------------------------------------------------------------------


class _Channel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.calls.append(("nack", tag, multiple))

    def basic_reject(self, tag: int, requeue: bool = True) -> None:
        assert not requeue
        self.calls.append(("reject", tag, False))


class _Store:
    """Refuses (as the database would) any group holding the message ``refused``."""

    def __init__(self, refused: str | None = None, down: bool = False) -> None:
        self.refused, self.down = refused, down
        self.recorded: list[str] = []

    def record(self, messages: list[IncomingStatus]) -> int:
        if self.down:
            raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused"))
        if any(m.id == self.refused for m in messages):
            raise sa.exc.DataError("INSERT", {}, Exception("value out of range"))
        self.recorded += [m.id for m in messages]
        return len(messages)


def _body(message_id: str) -> bytes:
    return json.dumps({"schema": "notifier.status.v1", "id": message_id, "type": "t"}).encode()


def _intake(store: _Store) -> StatusIntake:
    settings = CallbackSettings()
    return StatusIntake("amqp://unused", "statuses", settings, store)  # type: ignore[arg-type]


def test_the_intake_acks_a_group_after_recording_it_and_dead_letters_what_is_not_a_status() -> None:
    channel, store = _Channel(), _Store()
    _intake(store).take(channel, [(1, _body("a")), (2, b"junk"), (3, _body("b"))])
    assert channel.calls == [("reject", 2, False), ("ack", 3, True)]
    assert store.recorded == ["a", "b"]


def test_a_message_the_database_refuses_is_dead_lettered_alone_and_the_rest_recorded() -> None:
    channel, store = _Channel(), _Store(refused="b")
    _intake(store).take(channel, [(1, _body("a")), (2, _body("b")), (3, _body("c"))])
    assert channel.calls == [("ack", 1, False), ("reject", 2, False), ("ack", 3, False)]
    assert store.recorded == ["a", "c"]


def test_a_database_outage_requeues_the_whole_group() -> None:
    channel, store = _Channel(), _Store(down=True)
    intake = _intake(store)
    intake.stopping.set()  # no pause after the failure
    intake.take(channel, [(1, _body("a")), (2, _body("b"))])
    assert channel.calls == [("nack", 2, True)]
