"""What deliveries cost (issue 19, item 2), end to end on PostgreSQL against the local
eSMS and Zalo servers, which bill each message and record it: the report's figures
match what they charged, to the dong. eSMS reports its charge in its delivery report
(TotalPrice), which replaces our estimate; Zalo does not, so our price table is used,
by phone (ZNS) or by user id (ZBS UID)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from notifier_simulators.local import LocalProviders

from notifier.app import Notifier
from notifier.ops.reports import build_report
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.operators import OperatorStore
from notifier.store.schema import deliveries, utcnow
from notifier.web.api import create_api
from tests.integration.test_console import AGENCY_A, AGENCY_B, PASSWORD, seed_log, signed_in
from tests.support import REPO, RunningWorker, ServedApi, make_settings, wait_until

pytestmark = pytest.mark.integration

LONG_REASON = (
    "Bổ sung bản sao chứng thực giấy chứng nhận quyền sử dụng đất, sơ đồ thửa đất và "
    "văn bản ủy quyền có công chứng của các đồng sở hữu trước ngày hẹn trả kết quả."
)
# Carriers bill differently: Viettel, MobiFone, Vinaphone numbers.
PHONES = ("0961234567", "0901888484", "0912345678", "0971112233")
ZALO_UID = "4368496045530239152"


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as local:
        yield local


def prices(providers: LocalProviders) -> dict[str, Any]:
    """Our price table. eSMS's estimate is deliberately not its real price list: its
    reported charge must replace it. Zalo's matches what Zalo bills (no report)."""
    return {
        "prices": {
            "esms": {"per_segment_vnd": 800},
            "zalo": {
                "per_message_vnd": providers.zalo.zns_price_vnd,
                "per_uid_message_vnd": providers.zalo.uid_price_vnd,
            },
            "email": {"per_message_vnd": 0},
            "portal": {"per_message_vnd": 0},
        },
        "budgets": {"000.00.12.H29": 2_000, "000.00.20.H56": 1_000_000},
    }


def events() -> list[dict[str, Any]]:
    made = []
    for index, phone in enumerate(PHONES):
        event = sample_event(index * 2, event_id=uuid.uuid4())  # agencies alternate
        event["dossier"]["status"] = "supplement_requested"
        event["dossier"]["reason"] = LONG_REASON if index % 2 == 0 else "Thiếu tờ khai."
        zalo: dict[str, str] = {"user_id": ZALO_UID} if index == 3 else {"phone": phone}
        event["applicant"]["contacts"] = {
            "phone": phone,
            "zalo": zalo,
            "email": f"citizen{index}@example.vn",
        }
        made.append(event)
    return made


def test_the_reports_cost_matches_what_the_simulators_charged_to_the_dong(
    pg_database: Database, providers: LocalProviders
) -> None:
    settings = make_settings(
        database_url=pg_database.url,
        costs=prices(providers),
        **providers.settings_overrides(),
    )
    app = Notifier(settings)
    providers.seed_tokens(app.tokens)
    started = utcnow() - timedelta(minutes=1)
    sent = events()
    with RunningWorker(app), ServedApi(create_api(app)) as api:
        for event in sent:
            app.submit(json.dumps(event, ensure_ascii=False).encode(), source="test")
        wait_until(lambda: len(providers.esms.messages) == 4 and len(providers.zalo.messages) == 4)
        wait_until(
            lambda: all(r.status == "sent" for r in _rows(pg_database) if r.channel != "portal")
        )
        # eSMS's delivery reports, with what it billed for each message.
        token = providers.receipt_token
        for message in providers.esms.messages:
            answer = providers.esms.send_report(
                message, url=f"{api.base_url}/v1/receipts/esms/{token}"
            )
            assert answer.status_code == 200
        wait_until(
            lambda: all(
                r.cost_source == "reported" for r in _rows(pg_database) if r.channel == "sms"
            )
        )
        key = ApiKeys(pg_database).create("prometheus", ["metrics"], [])
        metrics = httpx.get(f"{api.base_url}/metrics", headers={"Authorization": f"Bearer {key}"})
        assert metrics.status_code == 200
    esms_charged = providers.esms.charged_vnd
    zalo_charged = providers.zalo.charged_vnd
    assert any(m.segments == 2 for m in providers.esms.messages)  # two segments billed twice
    assert len({m.charge_vnd // m.segments for m in providers.esms.messages}) > 1  # by carrier
    assert {m.user_id for m in providers.zalo.messages} == {ZALO_UID, None}

    report = build_report(DeliveryLog(pg_database, "k"), started, utcnow() + timedelta(minutes=1))
    figures = report.as_json()["cost"]
    assert Decimal(figures["by_channel"]["sms"]) == esms_charged
    assert Decimal(figures["by_channel"]["zalo"]) == zalo_charged
    assert Decimal(figures["total_vnd"]) == esms_charged + zalo_charged
    assert Decimal(figures["reported_vnd"]) == esms_charged
    # Each delivery's segments are the gateway's.
    by_request = {m.request_id: m for m in providers.esms.messages}
    for row in _rows(pg_database):
        if row.channel == "sms":
            assert row.segments == by_request[str(row.delivery_id)].segments
            assert row.cost_vnd == by_request[str(row.delivery_id)].charge_vnd
    # Average segments per SMS, per agency.
    segments = report.as_json()["sms_segments"]
    assert sum(f["sms"] for f in segments.values()) == 4
    assert sum(f["segments"] for f in segments.values()) == sum(
        m.segments for m in providers.esms.messages
    )
    # Prometheus: this month's cost, and the small budget is spent (80% and 100% alerts).
    text = metrics.text
    assert 'notifier_budget_alert{agency="000.00.12.H29",level="100"} 1.0' in text
    assert 'notifier_budget_alert{agency="000.00.20.H56",level="80"} 0.0' in text
    assert "notifier_month_cost_vnd{" in text


def _rows(database: Database) -> list[Any]:
    with database.engine.connect() as connection:
        return list(connection.execute(sa.select(deliveries)))


def test_the_console_shows_cost_superseded_segments_and_warns_of_budgets(
    pg_database: Database,
) -> None:
    seeded = seed_log(pg_database)
    d = deliveries.c
    with pg_database.begin() as connection:
        ids = list(connection.execute(sa.select(d.delivery_id, d.agency_code, d.channel)))
        for delivery_id, agency, channel in ids:
            connection.execute(
                sa.update(deliveries)
                .where(d.delivery_id == delivery_id)
                .values(
                    cost_vnd=Decimal(1000) if agency == AGENCY_A else Decimal(10),
                    cost_source="estimate",
                    segments=2 if channel == "sms" else None,
                    created_at=seeded.now,
                )
            )
        connection.execute(
            sa.update(deliveries).where(d.delivery_id == ids[0][0]).values(status="superseded")
        )
    spent_a = 1000 * sum(1 for _i, agency, _c in ids if agency == AGENCY_A)
    spent_b = 10 * sum(1 for _i, agency, _c in ids if agency == AGENCY_B)
    # A has spent all its budget; B about 90% of its own: a warning.
    budgets = {AGENCY_A: spent_a, AGENCY_B: spent_b * 10 // 9}
    app = Notifier(make_settings(database_url=pg_database.url, costs={"budgets": budgets}))
    OperatorStore(pg_database).add("minh.viewer", PASSWORD, "viewer")
    try:
        with ServedApi(create_api(app)) as api:
            client = signed_in(api.base_url, "minh.viewer")
            page = client.get("/console/reports").text
            overview = client.get("/console/overview").text
    finally:
        app.close()
    total = spent_a + spent_b
    vi_total = f"{total:,}".replace(",", ".")
    assert f'id="report-cost">{vi_total}<' in page
    assert 'id="report-superseded">1<' in page
    assert 'id="report-segments"' in page
    for html in (page, overview):
        assert f'class="notice notice-bad" role="alert" data-budget="{AGENCY_A}"' in html
        assert f'class="notice notice-warn" role="alert" data-budget="{AGENCY_B}"' in html
        assert "Đã dùng hết ngân sách tháng" in html


def test_a_zalo_user_id_send_refused_for_its_template_goes_by_phone_then_by_sms(
    tmp_path: Path, pg_database: Database, providers: LocalProviders
) -> None:
    """Zalo by UID, else ZNS by phone, else SMS: on failure too. The templates were
    approved before UID sends existed (-249); the phone has no Zalo account (-118). The
    status goes to "zalo|sms": the SMS is only ever the last step of the chain."""
    for first in (245001, 246001):
        for template in range(first, first + 11):
            providers.zalo.refuse_uid_template(str(template))
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    routing = (config / "routing.toml").read_text("utf-8")
    routing = routing.replace(
        'result_ready         = ["portal", "email", "zalo", "sms"]',
        'result_ready         = ["zalo|sms"]',
    )
    (config / "routing.toml").write_text(routing, "utf-8")
    app = Notifier(
        make_settings(
            config_dir=config, database_url=pg_database.url, **providers.settings_overrides()
        )
    )
    providers.seed_tokens(app.tokens)
    by_phone = sample_event(2, event_id=uuid.uuid4())
    by_phone["dossier"]["status"] = "result_ready"
    by_phone["applicant"]["channels"] = ["zalo"]
    by_phone["applicant"]["contacts"] = {"phone": PHONES[0], "zalo": {"user_id": ZALO_UID}}
    to_sms = sample_event(4, event_id=uuid.uuid4())
    to_sms["dossier"]["status"] = "result_ready"
    to_sms["applicant"]["channels"] = ["zalo", "sms"]
    to_sms["applicant"]["contacts"] = {
        "phone": PHONES[1],
        "zalo": {"user_id": "1111222233334444555", "phone": PHONES[1]},
    }
    providers.zalo.not_zalo_user(PHONES[1])
    with RunningWorker(app):
        for event in (by_phone, to_sms):
            app.submit(json.dumps(event, ensure_ascii=False).encode(), source="test")
        wait_until(lambda: len(providers.zalo.messages) == 1 and len(providers.esms.messages) == 1)
        wait_until(lambda: all(r.status != "queued" for r in _rows(pg_database)))
    [zns] = providers.zalo.messages
    assert zns.phone == "84" + PHONES[0][1:]  # the first citizen, by phone
    assert zns.user_id is None
    [sms] = providers.esms.messages
    assert sms.national_phone == PHONES[1]  # the second: no Zalo on that phone
    rows = _rows(pg_database)
    by_event: dict[str, list[tuple[str, str, str]]] = {}
    for row in rows:
        by_event.setdefault(str(row.event_id), []).append(
            (row.channel, (row.recipient or "")[:4], row.status)
        )
    assert sorted(by_event[by_phone["event_id"]]) == [
        ("zalo", "+849", "sent"),
        ("zalo", "uid:", "permanent-failure"),
    ]
    # The SMS is the fallback of the phone step, itself the fallback of the UID send.
    [sms_row] = [r for r in rows if r.channel == "sms"]
    [phone_step] = [r for r in rows if r.delivery_id == sms_row.fallback_of]
    assert phone_step.channel == "zalo"
    assert phone_step.fallback_of is not None
    assert sorted(by_event[to_sms["event_id"]]) == [
        ("sms", "+849", "sent"),
        ("zalo", "+849", "permanent-failure"),
        ("zalo", "uid:", "permanent-failure"),
    ]
