"""What deliveries cost (issue 19, item 2), end to end on PostgreSQL against the local
eSMS and Zalo servers, which bill each message and record it: the report's figures
match what they charged, to the dong. eSMS reports its charge in its delivery report
(TotalPrice), which replaces our estimate; Zalo does not, so our price table is used,
by phone (ZNS) or by user id (ZBS UID)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
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
from tests.support import RunningWorker, ServedApi, make_settings, wait_until

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
