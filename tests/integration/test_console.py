"""The operators' console and its JSON API on PostgreSQL with a seeded delivery log:
every console query, sign-in and sessions, CSRF, roles, security headers, /metrics.

The log is seeded through the tables (not the network), relative to "now", so the
hour / day / 30-day windows hold known numbers.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from notifier.app import Notifier
from notifier.events import Status
from notifier.masking import mask_recipient, recipient_hash
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.operators import OperatorStore
from notifier.store.schema import (
    deliveries,
    delivery_attempts,
    events,
    provider_health,
    rejected_events,
)
from notifier.web.api import create_api
from tests.support import ServedApi, make_settings

pytestmark = pytest.mark.integration

HASH_KEY = "notifier-development-only"
PASSWORD = "correct horse battery staple"
AGENCY_A, AGENCY_B = "000.00.12.H29", "000.00.20.H56"


@dataclass
class Seeded:
    """What was seeded, for the assertions."""

    now: datetime
    dossiers: dict[str, str] = field(default_factory=dict)  # name -> code
    deliveries: dict[str, uuid.UUID] = field(default_factory=dict)  # name -> id
    rejects: list[uuid.UUID] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # every delivery row seeded


def _event(
    connection: Any, code: str, agency: str, procedure: str, status: str, at: datetime
) -> uuid.UUID:
    event_id = uuid.uuid4()
    connection.execute(
        events.insert().values(
            event_id=event_id,
            received_at=at + timedelta(seconds=1),
            occurred_at=at,
            source_system="motcua-test",
            agency_code=agency,
            dossier_code=code,
            procedure_code=procedure,
            status=status,
            payload=None,
        )
    )
    return event_id


def seed_log(database: Database, now: datetime | None = None) -> Seeded:
    """A small, known delivery log: 4 dossiers, 9 deliveries, attempts, receipts, a
    fallback, a dead letter, rejects and provider health."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    seeded = Seeded(now=now)
    with database.begin() as connection:

        def delivery(
            name: str,
            event_id: uuid.UUID,
            code: str,
            agency: str,
            procedure: str,
            channel: str,
            recipient: str,
            status: str,
            created: datetime,
            *,
            provider: str | None = None,
            sent_after_s: float | None = None,
            attempts: list[tuple[str, str | None, str | None]] = (),  # type: ignore[assignment]
            last_error: str | None = None,
            exhausted: bool = False,
            fallback_of: uuid.UUID | None = None,
        ) -> uuid.UUID:
            delivery_id = uuid.uuid4()
            sent_at = None if sent_after_s is None else created + timedelta(seconds=sent_after_s)
            values = {
                "delivery_id": delivery_id,
                "event_id": event_id,
                "dossier_code": code,
                "agency_code": agency,
                "procedure_code": procedure,
                "event_status": "result_ready",
                "channel": channel,
                "provider": provider,
                "language": "vi",
                "template": f"{channel}/result_ready.vi",
                "recipient_masked": mask_recipient(recipient),
                "recipient_hash": recipient_hash(recipient, HASH_KEY),
                "recipient": recipient,
                "content": {"text": "Hồ sơ đã có kết quả"},
                "status": status,
                "attempts": sum(1 for a in attempts if not a[0].startswith("receipt")),
                "provider_message_id": f"{provider}-{name}" if sent_at else None,
                "last_error": last_error,
                "exhausted": exhausted,
                "created_at": created,
                "updated_at": created,
                "sent_at": sent_at,
                "delivered_at": sent_at if status == "delivered" else None,
                "fallback_of": fallback_of,
            }
            connection.execute(deliveries.insert().values(**values))
            for number, (outcome, error, code_) in enumerate(attempts, start=1):
                at = created + timedelta(seconds=number)
                connection.execute(
                    delivery_attempts.insert().values(
                        delivery_id=delivery_id,
                        number=number,
                        provider=provider,
                        started_at=at,
                        finished_at=at,
                        outcome=outcome,
                        error=error,
                        error_code=code_,
                        provider_message_id=values["provider_message_id"]
                        if outcome in ("sent", "delivered")
                        else None,
                    )
                )
            seeded.deliveries[name] = delivery_id
            seeded.rows.append(values)
            return delivery_id

        # Dossier 1, 20 minutes ago: email delivered, SMS sent, Zalo failed and fell back
        # to SMS... which is the same SMS recipient, so the fallback is a second SMS.
        code1 = f"{AGENCY_A}-261126-0001"
        at1 = now - timedelta(minutes=20)
        e1 = _event(connection, code1, AGENCY_A, "1.001193", "result_ready", at1)
        delivery(
            "d1_email",
            e1,
            code1,
            AGENCY_A,
            "1.001193",
            "email",
            "nguyen.van.a@example.vn",
            "delivered",
            at1,
            provider="smtp",
            sent_after_s=4,
            attempts=[("sent", None, None), ("receipt:delivered", None, None)],
        )
        delivery(
            "d1_sms",
            e1,
            code1,
            AGENCY_A,
            "1.001193",
            "sms",
            "0912345678",
            "sent",
            at1,
            provider="vietguys",
            sent_after_s=8,
            attempts=[("sent", None, None)],
        )
        zalo = delivery(
            "d1_zalo",
            e1,
            code1,
            AGENCY_A,
            "1.001193",
            "zalo",
            "0912345679",
            "permanent-failure",
            at1,
            provider="zns",
            attempts=[("permanent-failure", "not a Zalo user", "-118")],
            last_error="not a Zalo user",
        )
        delivery(
            "d1_fallback",
            e1,
            code1,
            AGENCY_A,
            "1.001193",
            "sms",
            "0912345679",
            "sent",
            at1 + timedelta(seconds=3),
            provider="vietguys",
            sent_after_s=6,
            attempts=[("sent", None, None)],
            fallback_of=zalo,
        )
        seeded.dossiers["d1"] = code1

        # Dossier 2, 5 hours ago: email gave up after retries (the dead letter), portal ok.
        code2 = f"{AGENCY_A}-261126-0002"
        at2 = now - timedelta(hours=5)
        e2 = _event(connection, code2, AGENCY_A, "1.000656", "supplement_requested", at2)
        retries = [("temporary-failure", "gateway timeout", "504")] * 3
        delivery(
            "d2_email",
            e2,
            code2,
            AGENCY_A,
            "1.000656",
            "email",
            "tran.thi.b@example.vn",
            "permanent-failure",
            at2,
            provider="smtp",
            attempts=[
                *retries,
                ("permanent-failure", "gave up after 4 attempts: gateway timeout", "504"),
            ],
            last_error="gave up after 4 attempts: gateway timeout",
            exhausted=True,
        )
        delivery(
            "d2_portal",
            e2,
            code2,
            AGENCY_A,
            "1.000656",
            "portal",
            "acc-000123",
            "delivered",
            at2,
            provider="portal",
            sent_after_s=0.5,
            attempts=[("delivered", None, None)],
        )
        seeded.dossiers["d2"] = code2

        # Dossier 3, 10 minutes ago, agency B: SMS waiting for a retry, email queued.
        code3 = f"{AGENCY_B}-261126-0003"
        at3 = now - timedelta(minutes=10)
        e3 = _event(connection, code3, AGENCY_B, "1.001193", "received", at3)
        delivery(
            "d3_sms",
            e3,
            code3,
            AGENCY_B,
            "1.001193",
            "sms",
            "0987654321",
            "temporary-failure",
            at3,
            provider="vietguys",
            attempts=[("temporary-failure", "gateway busy", "503")],
            last_error="gateway busy",
        )
        delivery(
            "d3_email", e3, code3, AGENCY_B, "1.001193", "email", "le.c@example.vn", "queued", at3
        )
        seeded.dossiers["d3"] = code3

        # Dossier 4, 3 days ago, agency B: one email sent (only in the 30-day window).
        code4 = f"{AGENCY_B}-261123-0004"
        at4 = now - timedelta(days=3)
        e4 = _event(connection, code4, AGENCY_B, "2.000908", "result_returned", at4)
        delivery(
            "d4_email",
            e4,
            code4,
            AGENCY_B,
            "2.000908",
            "email",
            "pham.d@example.vn",
            "sent",
            at4,
            provider="smtp",
            sent_after_s=30,
            attempts=[("sent", None, None)],
        )
        seeded.dossiers["d4"] = code4

        for i, (reason, payload) in enumerate(
            [
                ("body is not valid JSON: Expecting value", "not json"),
                ('unsupported schema_version "0"', '{"schema_version": "0"}'),
            ]
        ):
            reject_id = uuid.uuid4()
            connection.execute(
                rejected_events.insert().values(
                    reject_id=reject_id,
                    received_at=now - timedelta(minutes=30 + i),
                    source="amqp",
                    reason=reason,
                    errors=[],
                    event_id=None,
                    payload=payload,
                    payload_bytes=len(payload.encode()),
                )
            )
            seeded.rejects.append(reject_id)

        connection.execute(
            provider_health.insert(),
            [
                {
                    "provider": "smtp",
                    "channel": "email",
                    "circuit_state": "closed",
                    "consecutive_failures": 0,
                    "open_until": None,
                    "last_error": None,
                    "details": None,
                    "updated_at": now,
                },
                {
                    "provider": "vietguys",
                    "channel": "sms",
                    "circuit_state": "open",
                    "consecutive_failures": 7,
                    "open_until": now + timedelta(minutes=2),
                    "last_error": "gateway busy",
                    "details": {"quota_left": 120, "rate_limit_per_s": 30},
                    "updated_at": now,
                },
            ],
        )
    return seeded


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def app(pg_url: str, pg_database: Database) -> Iterator[Notifier]:
    notifier = Notifier(make_settings(database_url=pg_url))
    yield notifier
    notifier.close()


@pytest.fixture
def seeded(pg_database: Database) -> Seeded:
    return seed_log(pg_database)


@pytest.fixture
def served(app: Notifier) -> Iterator[ServedApi]:
    with ServedApi(create_api(app)) as api:
        yield api


@pytest.fixture
def operators(pg_database: Database) -> OperatorStore:
    store = OperatorStore(pg_database)
    store.add("lan.admin", PASSWORD, "admin")
    store.add("minh.viewer", PASSWORD, "viewer")
    return store


@pytest.fixture
def keys(pg_database: Database) -> dict[str, str]:
    api_keys = ApiKeys(pg_database)
    return {
        "operator": api_keys.create("dashboards", ["operator"], []),
        "admin": api_keys.create("ops-scripts", ["admin"], []),
        "metrics": api_keys.create("prometheus", ["metrics"], []),
        "publish": api_keys.create("motcua", ["publish"], []),
    }


def signed_in(base_url: str, username: str, password: str = PASSWORD) -> httpx.Client:
    """A browser-like client that went through the sign-in form."""
    client = httpx.Client(base_url=base_url, follow_redirects=False, timeout=10)
    form = client.get("/console/sign-in")
    assert form.status_code == 200
    token = csrf_of(form.text)
    answer = client.post(
        "/console/sign-in",
        data={"username": username, "password": password, "csrf_token": token, "next": ""},
    )
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- sign-in, sessions, headers ---------------------------------------------------------


def test_anonymous_requests_are_refused(served: ServedApi, seeded: Seeded) -> None:
    with httpx.Client(base_url=served.base_url) as client:
        page = client.get("/console/overview")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/sign-in?next=")
        assert client.get("/v1/overview").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get(f"/v1/dossiers/{seeded.dossiers['d1']}").status_code == 401
        # The sign-in page itself is served, in Vietnamese, with the security headers.
        form = client.get("/console/sign-in")
        assert form.status_code == 200
        assert "Đăng nhập" in form.text
        assert "script-src 'self'" in form.headers["content-security-policy"]
        assert "unsafe-inline" not in form.headers["content-security-policy"]
        assert form.headers["x-frame-options"] == "DENY"
        assert form.headers["x-content-type-options"] == "nosniff"
        assert form.headers["referrer-policy"] == "no-referrer"


def test_sign_in_session_cookie_and_sign_out(
    served: ServedApi, operators: OperatorStore, seeded: Seeded
) -> None:
    with httpx.Client(base_url=served.base_url) as anonymous:
        form = anonymous.get("/console/sign-in")
        token = csrf_of(form.text)
        wrong = anonymous.post(
            "/console/sign-in",
            data={"username": "lan.admin", "password": "wrong password!!", "csrf_token": token},
        )
        assert wrong.status_code == 401
        assert "không đúng" in wrong.text
        # Without the sign-in form's token: refused even with the right password.
        fresh = httpx.post(
            f"{served.base_url}/console/sign-in",
            data={"username": "lan.admin", "password": PASSWORD},
        )
        assert fresh.status_code == 403

    client = signed_in(served.base_url, "lan.admin")
    cookie = next(c for c in client.cookies.jar if c.name == "notifier_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert not cookie.secure  # plain http on 127.0.0.1 only
    overview = client.get("/console/overview")
    assert overview.status_code == 200
    assert "lan.admin" in overview.text
    # A tampered cookie is no session.
    tampered = httpx.Client(base_url=served.base_url)
    tampered.cookies.set("notifier_session", cookie.value[:-2] + "xx", domain=cookie.domain)
    assert tampered.get("/console/overview").status_code == 303
    # Signing out needs the CSRF token, then ends the session for this browser.
    assert client.post("/console/sign-out", data={}).status_code == 403
    out = client.post("/console/sign-out", data={"csrf_token": csrf_of(overview.text)})
    assert out.status_code == 303
    assert client.get("/console/overview").status_code == 303


def test_disabled_operator_loses_the_session(served: ServedApi, operators: OperatorStore) -> None:
    client = signed_in(served.base_url, "minh.viewer")
    assert client.get("/console/overview").status_code == 200
    operators.disable("minh.viewer")
    assert client.get("/console/overview").status_code == 303
    operators.enable("minh.viewer")
    operators.set_password("minh.viewer", "another long password")
    assert client.get("/console/overview").status_code == 303  # old password's session


def _cookie_copy(base_url: str, client: httpx.Client) -> httpx.Client:
    """Another client holding a copy of ``client``'s session cookie, as a thief would."""
    cookie = next(c for c in client.cookies.jar if c.name == "notifier_session")
    thief = httpx.Client(base_url=base_url, follow_redirects=False, timeout=10)
    thief.cookies.set("notifier_session", cookie.value, domain=cookie.domain)
    return thief


def test_a_session_cookie_reused_after_sign_out_is_sent_to_sign_in(
    served: ServedApi, operators: OperatorStore
) -> None:
    client = signed_in(served.base_url, "lan.admin")
    other_browser = signed_in(served.base_url, "lan.admin")
    overview = client.get("/console/overview")
    copy = _cookie_copy(served.base_url, client)
    assert copy.get("/console/overview").status_code == 200
    out = client.post("/console/sign-out", data={"csrf_token": csrf_of(overview.text)})
    assert out.status_code == 303
    again = copy.get("/console/overview")
    assert again.status_code == 303
    assert again.headers["location"].startswith("/console/sign-in")
    assert copy.get("/v1/overview").status_code == 401
    # Signing out ends that session only: the operator's other browser stays in.
    assert other_browser.get("/console/overview").status_code == 200


def test_a_session_cookie_reused_after_a_password_change_is_sent_to_sign_in(
    served: ServedApi, operators: OperatorStore
) -> None:
    copy = _cookie_copy(served.base_url, signed_in(served.base_url, "minh.viewer"))
    assert copy.get("/console/overview").status_code == 200
    operators.set_password("minh.viewer", "a brand new long password")
    assert copy.get("/console/overview").status_code == 303
    assert signed_in(served.base_url, "minh.viewer", "a brand new long password")


def test_a_session_cookie_reused_after_disable_and_enable_is_sent_to_sign_in(
    served: ServedApi, operators: OperatorStore
) -> None:
    copy = _cookie_copy(served.base_url, signed_in(served.base_url, "minh.viewer"))
    assert copy.get("/console/overview").status_code == 200
    operators.disable("minh.viewer")
    operators.enable("minh.viewer")
    page = copy.get("/console/overview")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/sign-in")
    assert signed_in(served.base_url, "minh.viewer").get("/console/overview").status_code == 200


def test_operators_sign_out_ends_every_session_of_an_operator(
    served: ServedApi, operators: OperatorStore
) -> None:
    first = signed_in(served.base_url, "lan.admin")
    second = signed_in(served.base_url, "lan.admin")
    viewer = signed_in(served.base_url, "minh.viewer")
    assert operators.end_sessions("lan.admin") == 2
    assert first.get("/console/overview").status_code == 303
    assert second.get("/console/overview").status_code == 303
    assert viewer.get("/console/overview").status_code == 200


class FrozenClock:
    """The sign-in throttle's clock, moved by the test only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def behind_proxy(pg_url: str, pg_database: Database) -> Iterator[tuple[ServedApi, FrozenClock]]:
    """The API behind a reverse proxy on 127.0.0.1 that names clients in X-Forwarded-For
    (the test's requests come from 127.0.0.1 and play the proxy), the throttle on a
    frozen clock."""
    notifier = Notifier(make_settings(database_url=pg_url, api={"trusted_proxies": ["127.0.0.1"]}))
    api = create_api(notifier)
    clock = FrozenClock()
    api.state.console.throttle.clock = clock
    with ServedApi(api) as served:
        yield served, clock
    notifier.close()


def _sign_in_attempt(client: httpx.Client, username: str, password: str, via: str) -> int:
    headers = {"X-Forwarded-For": via}
    token = csrf_of(client.get("/console/sign-in", headers=headers).text)
    return client.post(
        "/console/sign-in",
        data={"username": username, "password": password, "csrf_token": token},
        headers=headers,
    ).status_code


def test_sign_in_is_throttled_for_the_guessing_address_only(
    behind_proxy: tuple[ServedApi, FrozenClock], operators: OperatorStore
) -> None:
    served, clock = behind_proxy
    attacker = httpx.Client(base_url=served.base_url, follow_redirects=False, timeout=10)
    guesses = [
        _sign_in_attempt(attacker, "lan.admin", f"guess {i} guess", "203.0.113.7") for i in range(5)
    ]
    assert guesses == [401, 401, 401, 401, 429]
    # Throttled, the attacker's next try is refused before the password is looked at,
    # the right one included, and the wait is said.
    token = csrf_of(attacker.get("/console/sign-in").text)
    refused = attacker.post(
        "/console/sign-in",
        data={"username": "lan.admin", "password": PASSWORD, "csrf_token": token},
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    # The operator, from her own address, signs in at once (the reported lock-out).
    operator = httpx.Client(base_url=served.base_url, follow_redirects=False, timeout=10)
    assert _sign_in_attempt(operator, "lan.admin", PASSWORD, "198.51.100.20") == 303
    # The attacker's wait grows: 1 s after the 4th failure, then 2 s after the 5th...
    clock.now += 1
    assert _sign_in_attempt(attacker, "lan.admin", "guess 6 guess", "203.0.113.7") == 401
    clock.now += 1.5
    assert _sign_in_attempt(attacker, "lan.admin", "guess 7 guess", "203.0.113.7") == 429


def test_twenty_failures_through_the_proxy_lock_no_other_client_out(
    behind_proxy: tuple[ServedApi, FrozenClock], operators: OperatorStore
) -> None:
    served, _clock = behind_proxy
    attacker = httpx.Client(base_url=served.base_url, follow_redirects=False, timeout=10)
    for i in range(20):
        assert _sign_in_attempt(attacker, f"name{i}", "wrong password!", "203.0.113.7") == 401
    operator = httpx.Client(base_url=served.base_url, follow_redirects=False, timeout=10)
    assert _sign_in_attempt(operator, "minh.viewer", PASSWORD, "198.51.100.20") == 303


def test_a_client_cannot_escape_throttling_by_writing_its_own_forwarded_for(
    app: Notifier, operators: OperatorStore
) -> None:
    # No trusted proxy configured: X-Forwarded-For from the client is ignored.
    api = create_api(app)
    api.state.console.throttle.clock = FrozenClock()
    with ServedApi(api) as served:
        client = httpx.Client(base_url=served.base_url, follow_redirects=False, timeout=10)
        statuses = [
            _sign_in_attempt(client, "lan.admin", f"guess {i} guess", f"192.0.2.{i}")
            for i in range(5)
        ]
    assert statuses == [401, 401, 401, 401, 429]


def test_english_on_request_and_remembered(served: ServedApi, operators: OperatorStore) -> None:
    client = signed_in(served.base_url, "minh.viewer")
    vietnamese = client.get("/console/overview")
    assert "Tổng quan" in vietnamese.text
    assert 'lang="vi"' in vietnamese.text
    english = client.get("/console/overview?lang=en")
    assert "Overview" in english.text
    assert 'lang="en"' in english.text
    assert client.get("/console/providers").text.count("Providers") >= 1


# -- every console query, via the JSON API and the pages --------------------------------


def test_overview_counts_per_window(
    served: ServedApi, seeded: Seeded, keys: dict[str, str]
) -> None:
    with httpx.Client(base_url=served.base_url, headers=bearer(keys["operator"])) as client:
        hour = client.get("/v1/overview", params={"window": "hour"}).json()
        day = client.get("/v1/overview", params={"window": "day"}).json()
        month = client.get("/v1/overview", params={"window": "month"}).json()
    # Hour: dossiers 1 and 3 (6 deliveries); day adds dossier 2; month adds dossier 4.
    assert hour["total"] == 6
    assert day["total"] == 8
    assert month["total"] == 9
    assert day["by_channel"]["email"] == {"delivered": 1, "permanent-failure": 1, "queued": 1}
    assert day["by_channel"]["sms"] == {"sent": 2, "temporary-failure": 1}
    assert day["by_status"]["permanent-failure"] == 2
    assert day["dead_letters"] == 1  # only the email that gave up after retries
    assert hour["dead_letters"] == 0
    assert day["rejected_events"] == 2
    assert day["open_circuits"] == 1
    # Failure rate: permanent failures / (sent + delivered + permanent failures).
    assert day["failure_rate"] == pytest.approx(2 / (2 + 2 + 2))
    # Median event->sent over the day: samples 0.5, 4, 6+3, 8 -> 6.0 s.
    assert day["median_seconds_event_to_sent"] == pytest.approx(6.0)
    assert day["latency"]["sms"]["p50"] == pytest.approx(8.5)
    assert len(day["buckets"]) == 24
    assert len(month["buckets"]) == 30
    assert sum(sum(s) for s in day["series_by_status"].values()) == 8
    assert sum(month["series_by_channel"]["email"]) == 4


def test_overview_page_draws_charts(
    served: ServedApi, seeded: Seeded, operators: OperatorStore
) -> None:
    client = signed_in(served.base_url, "minh.viewer")
    page = client.get("/console/overview", params={"window": "day"})
    assert page.status_code == 200
    html = page.text
    assert html.count('<svg class="chart"') == 1
    assert html.count('<svg class="spark"') == 4  # one per channel seen
    assert 'class="seg s-permanent-failure"' in html
    assert "Tỉ lệ thất bại" in html
    assert "33,3 %" in html
    assert '<script src="/console/static/console.js"' in html
    assert "<script>" not in html  # no inline script (the CSP forbids it)
    css = client.get("/console/static/console.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


def test_reports_page_opens_on_the_last_30_days_with_the_report_made(
    served: ServedApi, seeded: Seeded, operators: OperatorStore
) -> None:
    client = signed_in(served.base_url, "minh.viewer")
    page = client.get("/console/reports")
    assert page.status_code == 200
    today = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")).date()
    first, end = today - timedelta(days=29), today + timedelta(days=1)
    assert f'name="from" value="{first}"' in page.text
    assert f'name="to" value="{end}"' in page.text
    total = re.search(r'id="report-total">([^<]+)<', page.text)
    assert total is not None, "the report is made on opening"
    assert total.group(1) != "0"
    explicit = client.get("/console/reports", params={"from": str(first), "to": str(end)})
    assert re.search(r'id="report-total">([^<]+)<', explicit.text).group(1) == total.group(1)


def test_search_by_dossier_recipient_masked_channel_status_agency_time(
    served: ServedApi, seeded: Seeded, keys: dict[str, str]
) -> None:
    def search(**body: Any) -> dict[str, Any]:
        answer = httpx.post(
            f"{served.base_url}/v1/deliveries/search", json=body, headers=bearer(keys["operator"])
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    by_dossier = search(dossier_code=seeded.dossiers["d1"])
    assert by_dossier["total"] == 4
    assert {i["channel"] for i in by_dossier["items"]} == {"email", "sms", "zalo"}
    # A full phone finds it through the keyed hash; only the masked form comes back.
    by_phone = search(recipient="0912345678")
    assert by_phone["total"] == 1
    assert by_phone["items"][0]["recipient"] == "*******678"
    assert "0912345678" not in str(by_phone)
    by_email = search(recipient="Tran.Thi.B@example.vn")
    assert [i["channel"] for i in by_email["items"]] == ["email"]
    assert search(recipient_masked="*******679")["total"] == 2  # zalo + its SMS fallback
    assert search(channel="sms", status="sent")["total"] == 2
    assert search(agency_code=AGENCY_B)["total"] == 3
    recent = search(since=(seeded.now - timedelta(minutes=15)).isoformat())
    assert recent["total"] == 2  # dossier 3 only
    ranged = search(
        since=(seeded.now - timedelta(days=4)).isoformat(),
        until=(seeded.now - timedelta(days=1)).isoformat(),
    )
    assert [i["dossier_code"] for i in ranged["items"]] == [seeded.dossiers["d4"]]
    page1 = search(page=1, page_size=4)
    page3 = search(page=3, page_size=4)
    assert page1["total"] == 9
    assert len(page1["items"]) == 4
    assert len(page3["items"]) == 1


def test_search_page_posts_then_shows_hash_not_contact(
    served: ServedApi, seeded: Seeded, operators: OperatorStore
) -> None:
    client = signed_in(served.base_url, "minh.viewer")
    form = client.get("/console/deliveries")
    token = csrf_of(form.text)
    found = client.post(
        "/console/deliveries", data={"csrf_token": token, "recipient": "0912345678"}
    )
    assert found.status_code == 303
    location = found.headers["location"]
    assert "0912345678" not in location
    assert "rh=" in location
    results = client.get(location)
    assert results.status_code == 200
    assert "*******678" in results.text
    assert "0912345678" not in results.text
    assert results.text.count("timeline-link") == 1
    by_code = client.post(
        "/console/deliveries",
        data={"csrf_token": token, "dossier_code": seeded.dossiers["d2"], "status": ""},
    )
    page = client.get(by_code.headers["location"])
    assert page.text.count("timeline-link") == 2
    assert client.post("/console/deliveries", data={"dossier_code": "x"}).status_code == 403
    paged = client.get("/console/deliveries", params={"page": 1})
    assert paged.text.count("timeline-link") == 9


def test_dossier_timeline(
    served: ServedApi, seeded: Seeded, keys: dict[str, str], operators: OperatorStore
) -> None:
    code = seeded.dossiers["d1"]
    answer = httpx.get(f"{served.base_url}/v1/dossiers/{code}", headers=bearer(keys["operator"]))
    assert answer.status_code == 200
    dossier = answer.json()
    assert [e["status"] for e in dossier["events"]] == ["result_ready"]
    assert len(dossier["deliveries"]) == 4
    by_channel = {(d["channel"], d["fallback_of"] is None): d for d in dossier["deliveries"]}
    email = by_channel[("email", True)]
    assert [a["outcome"] for a in email["attempts"]] == ["sent", "receipt:delivered"]
    assert email["provider_message_id"] == "smtp-d1_email"
    zalo = by_channel[("zalo", True)]
    assert zalo["attempts"][0]["error_code"] == "-118"
    fallback = by_channel[("sms", False)]
    assert fallback["fallback_of"] == zalo["delivery_id"]
    assert "0912345679" not in answer.text
    missing = httpx.get(f"{served.base_url}/v1/dossiers/NOPE-1", headers=bearer(keys["operator"]))
    assert missing.status_code == 404

    client = signed_in(served.base_url, "minh.viewer")
    page = client.get(f"/console/dossiers/{code}")
    assert page.status_code == 200
    assert page.text.count('class="card delivery"') == 4
    assert "Đã xử lý xong (9)" in page.text  # the status's Vietnamese name and code
    assert "not a Zalo user" in page.text
    assert "replay-button" not in page.text  # a viewer sees no replay buttons
    redirect = client.get(f"/console/deliveries/{seeded.deliveries['d1_zalo']}")
    assert redirect.status_code == 303
    assert redirect.headers["location"].endswith(f"#d-{seeded.deliveries['d1_zalo']}")


def test_dead_letters_and_rejects(
    served: ServedApi, seeded: Seeded, keys: dict[str, str], operators: OperatorStore
) -> None:
    with httpx.Client(base_url=served.base_url, headers=bearer(keys["operator"])) as client:
        exhausted = client.get("/v1/dead-letters").json()
        permanent = client.get("/v1/dead-letters", params={"kind": "permanent"}).json()
        temporary = client.get("/v1/dead-letters", params={"kind": "temporary"}).json()
        rejects = client.get("/v1/rejects").json()
    assert [i["delivery_id"] for i in exhausted["items"]] == [str(seeded.deliveries["d2_email"])]
    assert permanent["total"] == 2
    zalo = next(i for i in permanent["items"] if i["channel"] == "zalo")
    assert zalo["fallbacks"] == [
        {"delivery_id": str(seeded.deliveries["d1_fallback"]), "channel": "sms", "status": "sent"}
    ]
    assert temporary["total"] == 1
    assert {r["reject_id"] for r in rejects["items"]} == {str(r) for r in seeded.rejects}

    client = signed_in(served.base_url, "minh.viewer")
    page = client.get("/console/dead-letters")
    assert "gave up after 4 attempts" in page.text
    assert 'name="ids"' not in page.text  # viewers get no checkboxes
    rejects_page = client.get("/console/rejects")
    assert "not valid JSON" in rejects_page.text


def test_providers_health_and_error_rates(
    served: ServedApi, seeded: Seeded, keys: dict[str, str], operators: OperatorStore
) -> None:
    answer = httpx.get(f"{served.base_url}/v1/providers", headers=bearer(keys["operator"]))
    items = {i["provider"]: i for i in answer.json()["items"]}
    sms = items["vietguys"]
    assert sms["circuit_state"] == "open"
    assert sms["details"] == {"quota_left": 120, "rate_limit_per_s": 30}
    # Last hour: d1_sms sent, d1_fallback sent, d3_sms temporary failure.
    assert sms["last_hour"]["attempts"] == 3
    assert sms["last_hour"]["error_rate"] == pytest.approx(1 / 3)
    smtp = items["smtp"]
    assert smtp["last_hour"]["attempts"] == 1  # receipts are not sends
    assert smtp["last_day"]["attempts"] == 5
    assert smtp["last_day"]["ok"] == 1
    assert items["zns"]["last_day"]["permanent_failures"] == 1
    client = signed_in(served.base_url, "minh.viewer")
    page = client.get("/console/providers")
    assert "Tạm ngừng" in page.text
    assert "quota_left" in page.text


def test_json_api_takes_a_session_with_csrf_for_posts(
    served: ServedApi, seeded: Seeded, operators: OperatorStore
) -> None:
    client = signed_in(served.base_url, "lan.admin")
    assert client.get("/v1/overview").status_code == 200
    url = f"/v1/deliveries/{seeded.deliveries['d2_email']}/replay"
    assert client.post(url).status_code == 403  # no X-CSRF-Token
    assert client.post(url, headers={"X-CSRF-Token": "forged"}).status_code == 403


def test_keys_without_the_scope_are_refused(
    served: ServedApi, seeded: Seeded, keys: dict[str, str]
) -> None:
    with httpx.Client(base_url=served.base_url) as client:
        assert client.get("/v1/overview", headers=bearer(keys["publish"])).status_code == 403
        assert client.get("/v1/overview", headers=bearer(keys["metrics"])).status_code == 403
        assert client.get("/v1/overview", headers=bearer("ntf_wrong")).status_code == 401
        assert client.get("/metrics", headers=bearer(keys["publish"])).status_code == 403
        # An admin key reads the older operator routes too (admin = operator + replay).
        assert client.get("/v1/deliveries", headers=bearer(keys["admin"])).status_code == 200


def test_metrics_read_counters_recounted_from_the_log_and_the_backlog(
    served: ServedApi, seeded: Seeded, keys: dict[str, str], pg_database: Database
) -> None:
    from notifier.ops.metrics import metric_names, sample_value
    from notifier.store.counters import rebuild_counters

    # The seed writes rows straight to the tables, as an upgrading province's log:
    # counted once, as migration 0016 counts it.
    rebuild_counters(pg_database)
    answer = httpx.get(f"{served.base_url}/metrics", headers=bearer(keys["metrics"]))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert {
        "notifier_deliveries_total",
        "notifier_deliveries_in_flight",
        "notifier_delivery_retries_total",
        "notifier_dead_letters",
        "notifier_rejected_events_total",
        "notifier_publish_to_accepted_seconds",
        "notifier_oldest_unsent_seconds",
        "notifier_circuit_state",
        "notifier_database_up",
    } <= metric_names(text)
    assert all(n.startswith("notifier_") for n in metric_names(text))
    assert (
        sample_value(
            text, "notifier_deliveries_total", channel="sms", provider="vietguys", status="sent"
        )
        == 2
    )
    assert (
        sample_value(
            text, "notifier_deliveries_in_flight", channel="email", provider="none", status="queued"
        )
        == 1
    )
    assert sample_value(text, "notifier_delivery_retries_total", channel="email") == 3
    assert sample_value(text, "notifier_dead_letters", channel="email") == 1
    assert sample_value(text, "notifier_rejected_events_total") == 2
    assert sample_value(text, "notifier_circuit_state", provider="vietguys", channel="sms") == 2
    assert sample_value(text, "notifier_circuit_state", provider="smtp", channel="email") == 0
    assert sample_value(text, "notifier_database_up") == 1


def test_operator_accounts(pg_database: Database) -> None:
    from notifier.store.operators import OperatorError, Role

    store = OperatorStore(pg_database)
    with pytest.raises(OperatorError):
        store.add("x", PASSWORD, "admin")  # too short a name
    with pytest.raises(OperatorError):
        store.add("hoa", "short", "viewer")
    added = store.add("Hoa.Nguyen", PASSWORD, "viewer")
    assert added.username == "hoa.nguyen"
    assert added.role is Role.VIEWER
    with pytest.raises(OperatorError):
        store.add("hoa.nguyen", PASSWORD, "viewer")
    with pg_database.engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT password_hash FROM operators")).scalar_one()
    assert stored.startswith("scrypt$")
    assert PASSWORD not in stored
    assert store.authenticate("hoa.nguyen", PASSWORD) is not None
    assert store.authenticate("hoa.nguyen", PASSWORD + "x") is None
    assert store.authenticate("nobody", PASSWORD) is None
    assert store.disable("hoa.nguyen")
    assert store.authenticate("hoa.nguyen", PASSWORD) is None


# -- CLI parity -------------------------------------------------------------------------


def test_cli_shows_what_the_console_shows(
    pg_url: str, served: ServedApi, seeded: Seeded, keys: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from notifier.cli.main import main
    from tests.support import REPO

    env = {
        "NOTIFIER_DATABASE_URL": pg_url,
        "NOTIFIER_CONFIG_DIR": str(REPO / "config"),
        "NOTIFIER_BROKER_URL": "memory://",
    }
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    def api(path: str) -> Any:
        answer = httpx.get(f"{served.base_url}{path}", headers=bearer(keys["operator"]))
        assert answer.status_code == 200
        return answer.json()

    overview = json.loads(cli("overview", "--window", "day", "--json"))
    assert overview["by_channel"] == api("/v1/overview?window=day")["by_channel"]
    table = cli("overview", "--window", "day")
    assert "8 deliveries" in table
    assert table.splitlines()[3].split()[0] == "CHANNEL"

    code = seeded.dossiers["d1"]
    assert json.loads(cli("dossier", code, "--json")) == api(f"/v1/dossiers/{code}")
    assert "receipt:delivered" in cli("dossier", code)
    missing = runner.invoke(main, ["dossier", "NOPE"], env=env)
    assert missing.exit_code == 1

    lines = cli("dead-letters", "--kind", "permanent", "--json").splitlines()
    assert [json.loads(line) for line in lines] == api("/v1/dead-letters?kind=permanent")["items"]
    assert "gave up after 4 attempts" in cli("dead-letters")

    assert json.loads(cli("providers", "--json")) == api("/v1/providers")["items"]
    assert "vietguys" in cli("providers")


def test_cli_operator_accounts_and_tokens(pg_url: str, pg_database: Database) -> None:
    from click.testing import CliRunner

    from notifier.cli.main import main

    env = {"NOTIFIER_DATABASE_URL": pg_url}
    runner = CliRunner()
    added = runner.invoke(
        main,
        ["operators", "add", "lan.admin", "--role", "admin", "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
    )
    assert added.exit_code == 0, added.output
    assert PASSWORD not in added.output
    prompted = runner.invoke(
        main, ["operators", "add", "minh"], input=f"{PASSWORD}\n{PASSWORD}\n", env=env
    )
    assert prompted.exit_code == 0, prompted.output
    short = runner.invoke(
        main, ["operators", "add", "hoa", "--password-stdin"], input="x\n", env=env
    )
    assert short.exit_code == 1
    assert "at least 12" in short.output
    listed = runner.invoke(main, ["operators", "list"], env=env)
    assert "lan.admin" in listed.output
    assert "admin" in listed.output
    assert runner.invoke(main, ["operators", "disable", "minh"], env=env).exit_code == 0
    assert OperatorStore(pg_database).authenticate("minh", PASSWORD) is None
    token = runner.invoke(main, ["operators", "token", "prometheus", "--role", "metrics"], env=env)
    assert token.exit_code == 0
    client = ApiKeys(pg_database).authenticate(token.output.strip())
    assert client is not None
    assert client.scopes == ("metrics",)


# -- worker metrics ---------------------------------------------------------------------


def test_send_metrics_follow_provider_calls() -> None:
    from prometheus_client import generate_latest

    from notifier.ops.metrics import SendMetrics, sample_value
    from notifier.pipeline.guard import ProviderCall

    metrics = SendMetrics()
    metrics.observe(ProviderCall("sms", "vietguys", "sent", 0.2))
    metrics.observe(ProviderCall("sms", "vietguys", "temporary-failure", 3.0, "503"))
    metrics.observe(
        ProviderCall("sms", "vietguys", "permanent-failure", 0.1, "103", operator_alert=True)
    )
    text = generate_latest(metrics.registry).decode()
    labels = {"channel": "sms", "provider": "vietguys"}
    assert sample_value(text, "notifier_send_seconds_count", **labels, outcome="sent") == 1
    assert (
        sample_value(text, "notifier_send_seconds_bucket", **labels, outcome="sent", le="0.25") == 1
    )
    assert (
        sample_value(text, "notifier_provider_calls_total", **labels, outcome="temporary-failure")
        == 1
    )
    assert sample_value(text, "notifier_provider_alerts_total", **labels, code="103") == 1


def test_worker_serves_dramatiq_and_send_metrics(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str, tmp_path: Any
) -> None:
    """`notifier worker` (the dramatiq command) with Dramatiq's Prometheus middleware:
    its exposition server shows Dramatiq's metrics and ours from the worker process."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from notifier_simulators.smtp import SmtpCatcher

    from notifier.ops.metrics import sample_value
    from notifier.ops.samples import sample_event
    from tests.support import REPO, rabbit_settings, wait_until

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with SmtpCatcher() as smtp:
        settings = rabbit_settings(
            amqp_url,
            pg_url,
            queue_prefix,
            adapters={"email": {"host": "127.0.0.1", "port": smtp.port}},
        )
        env = {
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "PROMETHEUS"))
            },
            "NOTIFIER_BROKER_URL": settings.broker_url,
            "NOTIFIER_DATABASE_URL": settings.database_url,
            "NOTIFIER_CONFIG_DIR": str(REPO / "config"),
            "NOTIFIER_EVENTS__EXCHANGE": settings.events.exchange,
            "NOTIFIER_EVENTS__QUEUE": settings.events.queue,
            "NOTIFIER_WORKER__QUEUE_PREFIX": queue_prefix,
            "NOTIFIER_ADAPTERS__EMAIL__HOST": "127.0.0.1",
            "NOTIFIER_ADAPTERS__EMAIL__PORT": str(smtp.port),
            "NOTIFIER_LOG_FORMAT": "json",
            "dramatiq_prom_db": str(tmp_path / "prometheus"),
            "dramatiq_prom_host": "127.0.0.1",
            "dramatiq_prom_port": str(port),
        }
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "notifier"),
                "worker",
                "--processes",
                "1",
                "--threads",
                "2",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        app = Notifier(settings)
        try:
            event = sample_event(2, status=Status.RESULT_READY, event_id=uuid.uuid4())
            app.submit(json.dumps(event, ensure_ascii=False).encode(), source="amqp")
            wait_until(lambda: len(smtp.messages) == 1, timeout=60)

            def scraped() -> str | None:
                try:
                    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                except httpx.HTTPError:
                    return None
                found = sample_value(
                    text, "notifier_send_seconds_count", channel="email", provider="email"
                )
                return text if found else None

            text = wait_until(scraped, timeout=30)
        finally:
            app.close()
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
    assert sample_value(text, "notifier_provider_calls_total", channel="email", outcome="sent") == 1
    assert (sample_value(text, "dramatiq_messages_total", actor_name="ingest") or 0) >= 1
    assert (
        sample_value(
            text,
            "dramatiq_messages_total",
            queue_name=f"{queue_prefix}.email",
            actor_name="deliver_email",
        )
        == 1
    )


# -- citizens' messages -----------------------------------------------------------------


def test_operators_see_citizens_messages_masked_with_counts_in_metrics_and_the_report(
    app: Notifier, served: ServedApi, operators: OperatorStore, keys: dict[str, str]
) -> None:
    from notifier.adapter import InboundMessage

    phone = "0987654321"
    texts = ["Cho tôi hỏi hồ sơ của 0912000111 thế nào", "HD", "TRA CUU 000.00.99.X99-991231-9"]
    app.inbound.handle(
        "esms",
        "sms",
        [
            InboundMessage(sender=phone, text=text, provider_message_id=f"mo:{i}")
            for i, text in enumerate(texts)
        ],
    )
    client = signed_in(served.base_url, "minh.viewer")
    try:
        page = client.get("/console/inbound")
        assert page.status_code == 200
        assert page.text.count("<tr>") == 1 + 3  # the header and three messages
        unrecognised = client.get("/console/inbound?command=unrecognised")
        assert unrecognised.text.count("<tr>") == 1 + 1
        assert "Cho t" in unrecognised.text
        # Masked: neither the sender nor a number written in the text shows.
        for html in (page.text, unrecognised.text):
            assert phone[1:] not in html
            assert "0912000111" not in html
        metrics = client.get("/metrics", headers=bearer(keys["metrics"])).text
        report = client.get(
            "/v1/reports",
            params={"day": datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")).date().isoformat()},
            headers=bearer(keys["operator"]),
        )
    finally:
        client.close()
    for command in ("unrecognised", "help", "status"):
        line = (
            f'notifier_inbound_messages{{channel="sms",command="{command}",outcome="answered"}} 1.0'
        )
        assert line in metrics
    assert report.status_code == 200, report.text
    inbound = report.json()["inbound"]
    assert inbound["messages"] == 3
    assert inbound["by_command"] == {"help": 1, "status": 1, "unrecognised": 1}
    assert report.json()["events"] == 0  # replies are deliveries, not dossier events
