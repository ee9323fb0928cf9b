"""Security controls, each by the refusal it makes (issue 9), on the real PostgreSQL and
RabbitMQ. Refusals already covered elsewhere (no key, wrong key, revoked key, no scope
and other agency at submission: test_api_and_cli.py; a bad Zalo signature, a wrong
eSMS token and a replayed Zalo receipt: test_channels.py) are not repeated here."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from notifier_simulators.local import LocalProviders
from pika.exceptions import ChannelClosedByBroker
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from notifier.adapter import InvalidReceipt, ReceiptRequest
from notifier.amqp import declare_topology
from notifier.app import Notifier
from notifier.cli.main import main
from notifier.ops.brokeradmin import publisher_permissions, publisher_topic_permissions, vhost_of
from notifier.ops.retention import Retention
from notifier.ops.samples import sample_event
from notifier.settings import ApiSettings, EventsSettings
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.migrate import upgrade
from notifier.store.optouts import OptOutStore, is_stop_text
from notifier.store.schema import api_clients, deliveries, opt_outs, utcnow
from notifier.web.api import create_api
from notifier.web.security import SecurityMiddleware
from tests.support import (
    REPO,
    RunningWorker,
    ServedApi,
    make_settings,
    rabbit_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

PHONE = "+84 90 188 8484"
OTHER_PHONE = "0912 345 678"  # logged masked as ********678 (see test_zz_service_log.py)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as local:
        yield local


def local_app(pg_url: str, providers: LocalProviders | None = None, **overrides: Any) -> Notifier:
    """The app on the in-process broker (no worker needed for the API's own checks)."""
    if providers is not None:
        overrides = {**providers.settings_overrides(), **overrides}
    return Notifier(make_settings(database_url=pg_url, **overrides))


# -- who may publish ----------------------------------------------------------------------


def test_keys_are_stored_hashed_agency_limited_and_revocation_is_immediate(
    pg_url: str, pg_database: Database
) -> None:
    keys = ApiKeys(pg_database)
    key = keys.create("motcua-two", ["publish"], ["000.00.12.H29", "000.00.20.H56"])
    own, second, foreign = sample_event(0), sample_event(1), sample_event(2)  # H29, H56, H26
    submitted: list[bytes] = []
    app = local_app(pg_url)
    with ServedApi(create_api(app, submit=lambda body, _submitter: submitted.append(body))) as api:

        def post(event: dict[str, Any]) -> int:
            return httpx.post(
                f"{api.base_url}/v1/events", json=event, headers=bearer(key)
            ).status_code

        assert post(own) == 202
        assert post(second) == 202
        assert post(foreign) == 403  # the key's agencies do not include H26
        keys.revoke("motcua-two")
        assert post(own) == 401  # revoked while in use: refused on the next call
    app.close()
    # Only what was allowed reached the queue: refusals happen before submission.
    assert [json.loads(b)["event_id"] for b in submitted] == [
        own["event_id"],
        second["event_id"],
    ]
    with pg_database.engine.connect() as connection:
        stored = connection.execute(sa.select(api_clients)).mappings().one()
    assert key not in json.dumps(dict(stored), default=str)
    assert stored["key_hash"] == hashlib.sha256(key.encode()).hexdigest()


# -- who may read the inbox ---------------------------------------------------------------


def test_an_account_sees_only_its_own_notifications(pg_url: str, pg_database: Database) -> None:
    keys = ApiKeys(pg_database)
    portal = keys.create("portal", ["inbox"], [])
    publisher = keys.create("motcua", ["publish"], [])
    app = local_app(pg_url)

    def add(account: str, title: str) -> int:
        return app.inbox.add(
            delivery_id=uuid.uuid4(),
            account_id=account,
            agency_code="A",
            dossier_code=f"D-{title}",
            status="received",
            title=title,
            body="-",
            link=None,
        )

    a1, a2, b1 = add("acc-A", "a1"), add("acc-A", "a2"), add("acc-B", "b1")
    add("acc-AB", "ab1")  # an id that starts with another account's id
    with ServedApi(create_api(app)) as api:
        base = api.base_url

        def get(path: str, key: str = portal) -> httpx.Response:
            return httpx.get(base + path, headers=bearer(key))

        def post(path: str) -> httpx.Response:
            return httpx.post(base + path, headers=bearer(portal))

        listed = get("/v1/inbox/acc-A/notifications").json()["items"]
        assert [i["id"] for i in listed] == [a2, a1]
        # Wildcards and prefixes are not patterns: the id is matched exactly.
        for probe in ("acc-%25", "acc-_", "acc-", "%25", "*"):
            assert get(f"/v1/inbox/{probe}/notifications").json()["items"] == []
        # Another account's notification cannot be marked read through this account.
        assert post(f"/v1/inbox/acc-A/notifications/{b1}/read").status_code == 404
        assert post("/v1/inbox/acc-A/read-all").json() == {"marked": 2}
        assert get("/v1/inbox/acc-B/unread-count").json() == {"unread": 1}
        # A publisher's key does not read inboxes; there is no route across accounts.
        assert get("/v1/inbox/acc-A/notifications", publisher).status_code == 403
        assert get("/v1/inbox").status_code == 404
        assert get("/v1/inbox/notifications").status_code == 404
        paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    app.close()
    inbox_paths = [p for p in paths if p.startswith("/v1/inbox")]
    assert inbox_paths
    assert all(p.startswith("/v1/inbox/{account_id}/") for p in inbox_paths)


# -- webhooks -----------------------------------------------------------------------------


def test_only_unsigned_webhooks_are_refused_and_signed_repeats_get_200_once_applied(
    pg_url: str, pg_database: Database, providers: LocalProviders
) -> None:
    app = local_app(pg_url, providers)
    zalo = providers.zalo
    tracking = str(uuid.uuid4())
    with ServedApi(create_api(app)) as api:
        receipts = f"{api.base_url}/v1/receipts"
        # eSMS signs nothing: the shared token in the URL is the proof; none, no entry.
        query = {"SMSID": "1", "SendStatus": "5", "SendSuccess": "1", "RequestId": tracking}
        assert httpx.get(f"{receipts}/esms", params=query).status_code == 403
        assert httpx.get(f"{receipts}/esms", params={**query, "token": ""}).status_code == 403
        assert httpx.get(f"{receipts}/esms/wrong-token-0123456789", params=query).status_code == 403
        # Zalo: no signature header, or a wrong one.
        body, headers = zalo.build_receipt(tracking, msg_id="zalo-msg-1")
        assert httpx.post(f"{receipts}/zalo", content=body).status_code == 403
        forged = {**headers, "X-ZEvent-Signature": "mac=" + "0" * 64}
        assert httpx.post(f"{receipts}/zalo", content=body, headers=forged).status_code == 403
        # Correctly signed, stamped five hours ago (a retry keeping the first timestamp):
        # taken. (It names no delivery here: received, not applied.)
        late_ms = int((time.time() - 5 * 3600) * 1000)
        late_body, late_headers = zalo.build_receipt(
            tracking, msg_id="zalo-msg-1", timestamp_ms=late_ms
        )
        late = httpx.post(f"{receipts}/zalo", content=late_body, headers=late_headers)
        assert late.status_code == 200, late.text
        assert late.json()["received"] == 1
        # The same report again, as Zalo retries it: 200, a duplicate, whether signed
        # with the first timestamp or a new one.
        for again_body, again_headers in ((late_body, late_headers), (body, headers)):
            again = httpx.post(f"{receipts}/zalo", content=again_body, headers=again_headers)
            assert again.status_code == 200
            assert again.json() == {
                "received": 1,
                "applied": 0,
                "duplicates": 1,
                "inbound": 0,
                "opted_out": 0,
            }
        # Signed two days ago: past the window (24 h), acknowledged and ignored.
        old_ms = int((time.time() - 2 * 86_400) * 1000)
        old_body, old_headers = zalo.build_receipt(str(uuid.uuid4()), timestamp_ms=old_ms)
        old = httpx.post(f"{receipts}/zalo", content=old_body, headers=old_headers)
        assert (old.status_code, old.json()["received"]) == (200, 0)
        # Retention deletes old nonces only once they are past twice the window, so a
        # repeat that could still be taken is always recognised.
        retention = Retention(app.database, app.settings, registry=app.registry)
        report = retention.purge(now=utcnow() + timedelta(days=1))
        assert report.nonces == 0
        report = retention.purge(now=utcnow() + timedelta(days=8))
        assert report.nonces == 1
    app.close()
    # The same webhook after the purge, as the provider's clock would have it then:
    # outside the window, so read as nothing.
    app = local_app(pg_url, providers)
    adapter = next(p for p in app.registry.all_providers() if p.name == "zalo")
    request = ReceiptRequest(
        method="POST",
        headers={k.lower(): v for k, v in headers.items()},
        query={},
        body=body,
        received_at=time.time() + 8 * 86_400,
    )
    assert adapter.adapter_class.parse_receipt(adapter.settings, request) == []
    with pytest.raises(InvalidReceipt):
        adapter.adapter_class.parse_receipt(
            adapter.settings, ReceiptRequest("POST", {}, {}, body, time.time())
        )
    app.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/receipts/zalo", b'{"app_id": "1", "timestamp": "\\ud800", "x": 1}'),
        ("POST", "/v1/opt-outs", b'{"channel": "sms", "recipient": "\\ud800"}'),
        ("DELETE", "/v1/opt-outs", b'{"channel": "sms", "recipient": "09\\udfff"}'),
        ("POST", "/v1/deliveries/search", b'{"dossier_code": "A\\ud800"}'),
        ("POST", "/v1/deliveries/search", b'{"page": "\\ud800"}'),
        ("POST", "/v1/events", b'{"event_id": "\\ud800"}'),
    ],
)
def test_text_that_is_not_unicode_gets_a_4xx_on_every_route(
    pg_url: str,
    pg_database: Database,
    providers: LocalProviders,
    method: str,
    path: str,
    body: bytes,
) -> None:
    app = local_app(pg_url, providers)
    key = ApiKeys(app.database).create("all", ["inbox", "operator", "publish"], [])
    with ServedApi(create_api(app, submit=lambda _body: None)) as api:
        headers = {**bearer(key), "Content-Type": "application/json"}
        answer = httpx.request(method, f"{api.base_url}{path}", content=body, headers=headers)
        assert answer.status_code == 400, answer.text
        assert "not valid Unicode" in answer.json()["detail"]
    app.close()


def test_escaped_text_that_is_unicode_still_passes_and_a_422_echoes_no_input(
    pg_url: str, pg_database: Database, providers: LocalProviders
) -> None:
    app = local_app(pg_url, providers)
    key = ApiKeys(app.database).create("portal", ["inbox"], [])
    with ServedApi(create_api(app)) as api:
        url = f"{api.base_url}/v1/opt-outs"
        headers = {**bearer(key), "Content-Type": "application/json"}
        # A pair of surrogate escapes is one character; an escaped backslash is text.
        for text in ('"Khai \\ud83d\\ude00"', '"\\\\ud800 as written"'):
            body = ('{"channel": "email", "recipient": ' + text + "}").encode()
            answer = httpx.post(url, content=body, headers=headers)
            assert answer.status_code == 200, answer.text
        # A refused value is not sent back: it may be personal data (or bad text).
        too_long = {"channel": "sms", "recipient": "0901888484" * 40}
        answer = httpx.post(url, json=too_long, headers=headers)
        assert answer.status_code == 422
        assert "0901888484" not in answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", "recipient"]
    app.close()


# -- opt-outs: stored, honoured, set by STOP replies ---------------------------------------


def make_rabbit_app(amqp_url: str, pg_url: str, prefix: str, providers: LocalProviders) -> Notifier:
    app = Notifier(rabbit_settings(amqp_url, pg_url, prefix, **providers.settings_overrides()))
    providers.seed_tokens(app.tokens)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    declare_topology(connection.channel(), app.settings.events)
    connection.close()
    return app


def event_for(status: str, **contacts: Any) -> dict[str, Any]:
    event = sample_event(7, event_id=uuid.uuid4())
    event["dossier"]["status"] = status
    event["applicant"]["contacts"] = contacts or {
        "phone": PHONE,
        "zalo": {"phone": PHONE},
        "email": "khai@example.vn",
    }
    return event


def rows_of(database: Database, event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as connection:
        found = connection.execute(
            sa.select(deliveries).where(deliveries.c.event_id == uuid.UUID(event["event_id"]))
        ).mappings()
        return {row["channel"]: dict(row) for row in found}


def test_an_opted_out_channel_is_suppressed_and_stop_replies_opt_out(
    amqp_url: str,
    pg_url: str,
    pg_database: Database,
    queue_prefix: str,
    providers: LocalProviders,
) -> None:
    app = make_rabbit_app(amqp_url, pg_url, queue_prefix, providers)
    portal = ApiKeys(pg_database).create("portal", ["inbox"], [])
    publisher = ApiKeys(pg_database).create("motcua", ["publish"], [])
    store = OptOutStore(pg_database, app.settings.recipient_hash_key.get_secret_value())
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        base = api.base_url
        # The portal records the citizen's choice, the number written another way.
        choice = {"channel": "sms", "recipient": "0901 888 484"}
        assert (
            httpx.post(f"{base}/v1/opt-outs", json=choice, headers=bearer(publisher)).status_code
            == 403
        )
        recorded = httpx.post(f"{base}/v1/opt-outs", json=choice, headers=bearer(portal))
        assert recorded.status_code == 200, recorded.text
        assert recorded.json() == {
            "channel": "sms",
            "recipient": "*******484",
            "opted_out": True,
            "changed": True,
        }
        unknown = {"channel": "pigeon", "recipient": "0901 888 484"}
        assert (
            httpx.post(f"{base}/v1/opt-outs", json=unknown, headers=bearer(portal)).status_code
            == 422
        )

        first = event_for("supplement_requested")  # portal, email, zalo and sms
        submitted = httpx.post(f"{base}/v1/events", json=first, headers=bearer(publisher))
        assert submitted.status_code == 202
        wait_until(
            lambda: (
                len(rows_of(pg_database, first)) == 3  # no portal account: no inbox
                and all(
                    r["status"] in ("sent", "suppressed")
                    for r in rows_of(pg_database, first).values()
                )
            )
        )
        found = rows_of(pg_database, first)
        assert found["sms"]["status"] == "suppressed"
        assert found["sms"]["attempts"] == 0
        assert found["email"]["status"] == "sent"
        assert found["zalo"]["status"] == "sent"
        assert providers.esms.messages == []
        assert providers.speedsms.messages == []

        # A citizen answers an SMS with "Từ chối": the gateway forwards it.
        inbound = f"{base}/v1/inbound-sms/esms"
        stop = {"Phone": "84912345678", "Content": "  Từ Chối! "}
        assert httpx.get(inbound, params=stop).status_code == 403  # no token
        assert httpx.get(inbound, params={**stop, "token": "x" * 24}).status_code == 403
        assert httpx.get(f"{base}/v1/inbound-sms/speedsms", params=stop).status_code == 403
        assert httpx.get(f"{base}/v1/inbound-sms/email", params=stop).status_code == 404
        assert not store.is_opted_out(OTHER_PHONE, "sms")
        chat = {
            "Phone": "0912345678",
            "Content": "Huy day, cam on",
            "token": providers.receipt_token,
        }
        assert httpx.get(inbound, params=chat).json()["opted_out"] is False
        assert not store.is_opted_out(OTHER_PHONE, "sms")
        taken = httpx.post(
            inbound, params={"token": providers.receipt_token}, data=stop
        )  # as a form post
        assert taken.status_code == 200, taken.text
        assert taken.json()["opted_out"] is True
        assert store.is_opted_out(OTHER_PHONE, "sms")

        second = event_for("refused", phone=OTHER_PHONE)  # sms only
        assert (
            httpx.post(f"{base}/v1/events", json=second, headers=bearer(publisher)).status_code
            == 202
        )
        wait_until(
            lambda: rows_of(pg_database, second).get("sms", {}).get("status") == "suppressed"
        )

        # Opting back in: the next status goes out by SMS again.
        removed = httpx.request(
            "DELETE", f"{base}/v1/opt-outs", json=choice, headers=bearer(portal)
        )
        assert removed.json()["changed"] is True
        third = event_for("refused", phone=PHONE)
        assert (
            httpx.post(f"{base}/v1/events", json=third, headers=bearer(publisher)).status_code
            == 202
        )
        wait_until(lambda: rows_of(pg_database, third).get("sms", {}).get("status") == "sent")
    # The two replies the other number sent were answered by SMS (an "unrecognised"
    # answer and the opt-out's confirmation); the applicant got one status message.
    to_applicant = [m for m in providers.esms.messages if m.phone == "0901888484"]
    assert len(to_applicant) == 1
    assert {m.phone for m in providers.esms.messages} == {"0901888484", "0912345678"}
    with pg_database.engine.connect() as connection:
        kept = connection.execute(sa.select(opt_outs)).mappings().all()
    assert [(r["channel"], r["source"]) for r in kept] == [("sms", "sms-stop:esms")]
    assert "912345678" not in json.dumps([dict(r) for r in kept], default=str)  # hashed


@pytest.mark.parametrize(
    ("text", "stop"),
    [
        ("STOP", True),
        ("stop", True),
        ("Từ chối", True),
        ("TU CHOI", True),
        ("tuchoi.", True),
        ("HỦY", True),
        ("huy", True),
        ("Huy day", False),  # a given name, not a request
        ("Dung gui nua", False),
        ("", False),
    ],
)
def test_stop_words(text: str, stop: bool) -> None:
    assert is_stop_text(text) is stop


def test_operators_record_opt_outs_from_the_cli(pg_url: str, pg_database: Database) -> None:
    env = {"NOTIFIER_DATABASE_URL": pg_url, "NOTIFIER_CONFIG_DIR": str(REPO / "config")}
    runner = CliRunner()
    email = "Lan.Nguyen@Example.org"
    added = runner.invoke(
        main, ["opt-out", "add", "--channel", "email", "--recipient", email], env=env
    )
    assert added.exit_code == 0, added.output
    assert email not in added.output
    assert "L***@Example.org opted out of email" in added.output
    check = ["opt-out", "check", "--channel", "email", "--recipient", "lan.nguyen@example.org"]
    assert runner.invoke(main, check, env=env).exit_code == 0  # the same address, any case
    removed = runner.invoke(
        main, ["opt-out", "remove", "--channel", "email", "--recipient", email], env=env
    )
    assert removed.exit_code == 0
    assert runner.invoke(main, check, env=env).exit_code == 1


# -- hardening of the HTTP API ------------------------------------------------------------


def test_rate_limit_per_key_and_per_address(pg_url: str, pg_database: Database) -> None:
    keys = ApiKeys(pg_database)
    portal, other = keys.create("portal", ["inbox"], []), keys.create("portal-2", ["inbox"], [])
    app = local_app(pg_url, api={"rate_per_s": 0.05, "burst": 3})
    with ServedApi(create_api(app)) as api:
        url = f"{api.base_url}/v1/inbox/acc-1/unread-count"
        # A key's first request is charged to the address (the key is looked up once
        # that request is allowed); from then on the key has its own bucket of 3.
        codes = [httpx.get(url, headers=bearer(portal)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]
        limited = httpx.get(url, headers=bearer(portal))
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-content-type-options"] == "nosniff"
        # Another key is not held back by the first one's bucket.
        assert httpx.get(url, headers=bearer(other)).status_code == 200  # (address)
        assert httpx.get(url, headers=bearer(other)).status_code == 200  # (its own)
        # Made-up keys share the address's bucket (one token left): new keys buy nothing.
        guesses = [
            httpx.get(url, headers=bearer(f"ntf_{secrets.token_urlsafe(8)}")).status_code
            for _ in range(3)
        ]
        assert guesses == [401, 429, 429]
        assert httpx.get(url).status_code == 429  # no key at all: the same address
        # The valid keys still have their own tokens; health checks are never limited.
        assert httpx.get(url, headers=bearer(other)).status_code == 200
        assert {httpx.get(f"{api.base_url}/healthz").status_code for _ in range(5)} == {200}
    app.close()


def test_security_headers_on_every_response(pg_url: str, pg_database: Database) -> None:
    portal = ApiKeys(pg_database).create("portal", ["inbox"], [])
    app = local_app(pg_url)
    with ServedApi(create_api(app)) as api:
        base = api.base_url
        responses = {
            "ok": httpx.get(f"{base}/v1/inbox/acc-1/unread-count", headers=bearer(portal)),
            "unauthenticated": httpx.get(f"{base}/v1/inbox/acc-1/unread-count"),
            "not found": httpx.get(f"{base}/v1/nothing-here"),
            "health": httpx.get(f"{base}/healthz"),
            "docs": httpx.get(f"{base}/docs"),
        }
    app.close()
    assert [r.status_code for r in responses.values()] == [200, 401, 404, 200, 200]
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["x-frame-options"] == "DENY", name
        assert response.headers["referrer-policy"] == "no-referrer", name
    for name in ("ok", "unauthenticated", "not found"):
        assert responses[name].headers["cache-control"] == "no-store", name
    csp = responses["docs"].headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp


def test_a_route_s_own_headers_are_kept() -> None:
    """The console sets a stricter policy on its pages: the middleware adds, never replaces."""

    def page(_request: Any) -> HTMLResponse:
        return HTMLResponse(
            "<p>console</p>",
            headers={
                "Content-Security-Policy": "default-src 'self'",
                "X-Frame-Options": "SAMEORIGIN",
            },
        )

    def plain(_request: Any) -> HTMLResponse:
        return HTMLResponse("<p>other</p>")

    def data(_request: Any) -> JSONResponse:
        return JSONResponse({}, headers={"Cache-Control": "private, max-age=5"})

    inner = Starlette(
        routes=[Route("/console", page), Route("/plain", plain), Route("/v1/data", data)]
    )
    with ServedApi(SecurityMiddleware(inner, settings=ApiSettings())) as served:
        client = httpx.Client(base_url=served.base_url)
        console = client.get("/console")
        plain = client.get("/plain")
        data = client.get("/v1/data")
    assert console.headers["content-security-policy"] == "default-src 'self'"
    assert console.headers["x-frame-options"] == "SAMEORIGIN"
    assert console.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in plain.headers["content-security-policy"]
    assert data.headers["cache-control"] == "private, max-age=5"


def test_bodies_over_the_limit_are_refused_on_every_route(
    pg_url: str, pg_database: Database, providers: LocalProviders
) -> None:
    portal = ApiKeys(pg_database).create("portal", ["inbox"], [])
    app = local_app(pg_url, providers, api={"max_body_bytes": 4096})
    store = OptOutStore(pg_database, app.settings.recipient_hash_key.get_secret_value())
    big = {"channel": "sms", "recipient": "0901888484", "source": "portal", "pad": "x" * 5000}
    with ServedApi(create_api(app)) as api:
        base = api.base_url
        sized = httpx.post(f"{base}/v1/opt-outs", json=big, headers=bearer(portal))
        assert sized.status_code == 413
        assert sized.headers["x-content-type-options"] == "nosniff"

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
            yield b'{"channel": "sms", "recipient": "0901888484", "pad": "'
            yield b"x" * 3000
            yield b"x" * 3000
            yield b'"}'

        chunked = httpx.post(
            f"{base}/v1/opt-outs",
            content=chunks(),
            headers={**bearer(portal), "Content-Type": "application/json"},
        )
        assert chunked.status_code == 413
        for route in ("/v1/receipts/zalo", "/v1/inbound-sms/esms", "/v1/events"):
            assert httpx.post(base + route, content=b"{" + b" " * 5000 + b"}").status_code == 413
        # Under the limit the same route works (the limit is what refused).
        small = {"channel": "sms", "recipient": "0901888484"}
        assert (
            httpx.post(f"{base}/v1/opt-outs", json=small, headers=bearer(portal)).status_code == 200
        )
    app.close()
    assert store.is_opted_out("0901888484", "sms")


# -- publisher credentials on RabbitMQ ----------------------------------------------------


def _fake_rabbitmqctl(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in rabbitmqctl that records its arguments and standard input."""
    record = tmp_path / "calls.jsonl"
    script = tmp_path / "rabbitmqctl"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def test_the_publisher_password_never_is_an_argument(tmp_path: Path) -> None:
    script, record = _fake_rabbitmqctl(tmp_path)
    password = "correct-horse-battery-" + secrets.token_hex(4)
    database_url = f"sqlite:///{tmp_path}/n.db"
    upgrade(Database(database_url))  # the command records the publisher's agencies
    env = {
        "NOTIFIER_BROKER_URL": "amqp://admin:pw@rabbit:5672/tthc",
        "NOTIFIER_DATABASE_URL": database_url,
    }
    agency = ["--agency", "000.00.12.H29"]
    # No status queue: that needs the broker itself (tests/integration/test_status_queues.py).
    no_queue = ["--no-status-queue", "--rabbitmqctl", str(script)]
    result = CliRunner().invoke(
        main,
        ["broker", "add-publisher", "motcua-hn", *agency, *no_queue],
        input=password + "\n",
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert password not in result.output
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert all(password not in " ".join(c["argv"]) for c in calls)
    assert [c["stdin"] for c in calls if c["argv"][1] == "add_user"] == [password + "\n"]
    granted = next(c["argv"] for c in calls if c["argv"][1] == "set_permissions")
    assert granted == [
        "-q",
        "set_permissions",
        "-p",
        "tthc",
        "motcua-hn",
        "^$",
        r"^notifier\.events$",
        "^$",
    ]
    short = CliRunner().invoke(
        main,
        ["broker", "add-publisher", "x", *agency, "--rabbitmqctl", str(script)],
        input="short\n",
        env=env,
    )
    assert short.exit_code != 0
    assert "16+ characters" in short.output
    bad_name = CliRunner().invoke(
        main, ["broker", "add-publisher", *agency, "--", "-p"], input=password + "\n", env=env
    )
    assert bad_name.exit_code != 0
    assert "a publisher name is" in bad_name.output
    # Without agencies there is no publisher: the command says what to give.
    unbound = CliRunner().invoke(
        main,
        ["broker", "add-publisher", "motcua-x", "--rabbitmqctl", str(script)],
        input=password + "\n",
        env=env,
    )
    assert unbound.exit_code == 2
    assert "give --agency CODE (repeatable), or --every-agency" in unbound.output


def _refusal(connection: pika.BlockingConnection, action: Callable[[Any], object]) -> int:
    """Run ``action`` on a fresh channel; the broker's reply code when it closes it."""
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        action(channel)
    except ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    channel.close()
    return 200


def test_a_publisher_may_publish_events_and_nothing_else(
    amqp_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    settings = rabbit_settings(amqp_url, f"sqlite:///{tmp_path}/n.db", queue_prefix)
    events = settings.events
    dramatiq_queue = f"{queue_prefix}.email"
    admin = pika.BlockingConnection(pika.URLParameters(amqp_url))
    admin_channel = admin.channel()
    declare_topology(admin_channel, events)
    admin_channel.queue_declare(dramatiq_queue, durable=True)

    name = f"pub-{queue_prefix}"
    password = secrets.token_urlsafe(18)
    env = {
        "NOTIFIER_BROKER_URL": amqp_url,
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_EVENTS__EXCHANGE": events.exchange,
        "NOTIFIER_EVENTS__QUEUE": events.queue,
    }
    upgrade(Database(settings.database_url))  # the command records the user's agencies
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["broker", "add-publisher", name, "--agency", "000.00.12.H29"],
        input=password + "\n",
        env=env,
    )
    assert created.exit_code == 0, created.output
    try:
        host_and_vhost = amqp_url.split("@", 1)[1]
        publisher = pika.BlockingConnection(
            pika.URLParameters(f"amqp://{name}:{password}@{host_and_vhost}")
        )
        body = json.dumps(sample_event(3)).encode()
        persistent = pika.BasicProperties(content_type="application/json", delivery_mode=2)

        def publish(exchange: str, key: str) -> Callable[[Any], object]:
            return lambda ch: ch.basic_publish(exchange, key, body, persistent, mandatory=True)

        # Allowed: publish (confirmed) to the events exchange with the event routing key,
        # and check that the exchange exists (a passive declare needs no permission).
        assert _refusal(publisher, publish(events.exchange, events.routing_key)) == 200
        assert (
            _refusal(publisher, lambda ch: ch.exchange_declare(events.exchange, passive=True))
            == 200
        )
        method, _props, received = admin_channel.basic_get(events.queue, auto_ack=True)
        assert method is not None
        assert received == body

        # Refused, each with 403 ACCESS_REFUSED:
        refusals = {
            "consume the events queue": lambda ch: ch.basic_consume(events.queue, lambda *a: None),
            "get from the events queue": lambda ch: ch.basic_get(events.queue),
            "declare a queue": lambda ch: ch.queue_declare(f"{queue_prefix}.mine"),
            "declare an exchange": lambda ch: ch.exchange_declare(f"{queue_prefix}.x", "topic"),
            "redeclare the events exchange": lambda ch: ch.exchange_declare(
                events.exchange, "topic", durable=True
            ),
            "publish to a Dramatiq queue": publish("", dramatiq_queue),
            "publish to another exchange": publish("amq.topic", events.routing_key),
            "publish another routing key": publish(events.exchange, "dossier.status.v9"),
        }
        codes = {what: _refusal(publisher, action) for what, action in refusals.items()}
        assert codes == dict.fromkeys(refusals, 403)
        publisher.close()
        # Nothing reached Dramatiq's queue.
        assert admin_channel.queue_declare(dramatiq_queue, passive=True).method.message_count == 0
    finally:
        removed = runner.invoke(main, ["broker", "remove-publisher", name], env=env)
        admin.close()
    assert removed.exit_code == 0, removed.output
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(f"amqp://{name}:{password}@{host_and_vhost}"))


def test_the_definitions_file_grants_what_the_command_grants(amqp_url: str) -> None:
    """deploy/rabbitmq-definitions.json: the same permissions, and RabbitMQ takes it."""
    definitions = json.loads((REPO / "deploy" / "rabbitmq-definitions.json").read_text())
    events = EventsSettings()
    [vhost] = [v["name"] for v in definitions["vhosts"]]
    [exchange] = definitions["exchanges"]
    assert (exchange["name"], exchange["type"], exchange["durable"]) == (
        events.exchange,
        "topic",
        True,
    )
    [binding] = definitions["bindings"]
    assert (binding["source"], binding["destination"], binding["routing_key"]) == (
        events.exchange,
        events.queue,
        events.routing_key,
    )
    expected = publisher_permissions(events)
    publishers = [p for p in definitions["permissions"] if p["user"].startswith("motcua-")]
    assert publishers
    for grant in publishers:
        assert (grant["configure"], grant["write"], grant["read"]) == (
            expected.configure,
            expected.write,
            expected.read,
        )
        assert grant["vhost"] == vhost
    topic = publisher_topic_permissions(events)
    topics = {t["user"]: t for t in definitions["topic_permissions"]}
    for grant in publishers:
        assert topics[grant["user"]]["write"] == topic.write
        assert topics[grant["user"]]["exchange"] == events.exchange
    # No password in the file: users are created without one and keyed by the operator.
    assert all(u["password_hash"] == "" for u in definitions["users"])

    # RabbitMQ accepts the file (imported under names of this test, then removed).
    suffix = uuid.uuid4().hex[:6]
    renamed = json.loads(
        json.dumps(definitions)
        .replace(f'"{vhost}"', f'"{vhost}-{suffix}"')
        .replace('"motcua-', f'"t{suffix}-motcua-')
        .replace('"notifier-worker"', f'"t{suffix}-notifier-worker"')
    )
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"defs-{suffix}.json"
    path.write_text(json.dumps(renamed))

    def ctl(*args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
        ).stdout

    try:
        ctl("import_definitions", str(path))
        listed = ctl("list_permissions", "-p", f"{vhost}-{suffix}", "--no-table-headers")
        rows = {line.split("\t")[0]: line.split("\t")[1:] for line in listed.splitlines()}
        publisher = f"t{suffix}-{publishers[0]['user']}"
        assert rows[publisher] == [expected.configure, expected.write, expected.read]
        assert vhost_of(f"amqp://u:p@h/{vhost}-{suffix}") == f"{vhost}-{suffix}"
    finally:
        for user in renamed["users"]:
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_user", user["name"]], capture_output=True, timeout=60
            )
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", f"{vhost}-{suffix}"],
            capture_output=True,
            timeout=60,
        )
        path.unlink()


# -- secrets ------------------------------------------------------------------------------


def test_no_provider_secret_is_shown_by_notifier_adapters() -> None:
    secrets_set = {
        "NOTIFIER_ADAPTERS__ESMS__API_KEY": "esms-api-" + secrets.token_hex(8),
        "NOTIFIER_ADAPTERS__ESMS__SECRET_KEY": "esms-secret-" + secrets.token_hex(8),
        "NOTIFIER_ADAPTERS__ESMS__RECEIPT_TOKEN": "receipt-" + secrets.token_hex(8),
        "NOTIFIER_ADAPTERS__ESMS__BRANDNAME": "CONG DVC",
        "NOTIFIER_ADAPTERS__ZALO__APP_ID": "1234",
        "NOTIFIER_ADAPTERS__ZALO__APP_SECRET": "zalo-secret-" + secrets.token_hex(8),
        "NOTIFIER_ADAPTERS__ZALO__OA_SECRET_KEY": "zalo-oa-" + secrets.token_hex(8),
        "NOTIFIER_ADAPTERS__EMAIL__USERNAME": "mailer",
        "NOTIFIER_ADAPTERS__EMAIL__PASSWORD": "smtp-" + secrets.token_hex(8),
    }
    env = {**secrets_set, "NOTIFIER_CONFIG_DIR": str(REPO / "config")}
    runner = CliRunner()
    for args in (["adapters", "--json"], ["adapters"]):
        shown = runner.invoke(main, args, env=env)
        assert shown.exit_code == 0, shown.output
        for name, value in secrets_set.items():
            if name.endswith(("KEY", "SECRET", "TOKEN", "PASSWORD")):
                assert value not in shown.output, name
    described = {
        a["name"]: a for a in json.loads(runner.invoke(main, ["adapters", "--json"]).output)
    }
    typed = {
        (adapter, field["name"])
        for adapter, item in described.items()
        for field in item["settings"]
        if field["secret"]
    }
    assert {
        ("esms", "api_key"),
        ("esms", "secret_key"),
        ("esms", "receipt_token"),
        ("zalo", "app_secret"),
        ("zalo", "oa_secret_key"),
        ("email", "password"),
    } <= typed  # typed as secrets (SecretStr): never printed or logged
