"""The cheapest channel that reaches the citizen (issue 19, item 3) and the monthly
budget's routing at 100% (item 2), as the planner applies them: "one of" groups pick Zalo
by user id, else ZNS by phone, else SMS; an agency that spent its budget with
``at_limit = "cheaper_only"`` gets only the cheaper channels. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.schema import deliveries, utcnow
from tests.support import REPO, make_settings

AGENCY = "000.00.12.H29"  # sample_event's agency for even indexes
ZALO_UID = "4368496045530239152"
PHONE = "0901888484"


def app_with(
    tmp_path: Path,
    database: Database,
    routing_extra: str,
    *,
    at_limit: str = "continue",
    **overrides: Any,
) -> Notifier:
    config = tmp_path / "config"
    shutil.copytree(REPO / "config" / "templates", config / "templates", dirs_exist_ok=True)
    base = (REPO / "config" / "routing.toml").read_text("utf-8")
    base = base.replace('at_limit = "continue"', f'at_limit = "{at_limit}"')
    (config / "routing.toml").write_text(base + "\n" + routing_extra, "utf-8")
    settings = make_settings(
        config_dir=config,
        database_url=database.url,
        channels={"sms": {"providers": ["esms"]}},
        adapters={
            "esms": {"api_key": "k", "secret_key": "s", "brandname": "CONG DVC"},
            "zalo": {"app_id": "a", "app_secret": "s"},
            "email": {"host": "127.0.0.1", "port": 2525},
        },
        **overrides,
    )
    return Notifier(settings)


SMS_AND_EMAIL = {"phone": PHONE, "email": "a@example.vn"}
ONE_OF = f'[agencies."{AGENCY}".statuses]\nresult_ready = ["portal", "zalo|sms"]\n'


@pytest.fixture
def app(tmp_path: Path, database: Database) -> Iterator[Notifier]:
    notifier = app_with(tmp_path, database, ONE_OF)
    yield notifier
    notifier.close()


def planned(
    app: Notifier,
    contacts: dict[str, Any],
    channels: list[str] | None = None,
    status: str = "result_ready",
) -> dict[str, tuple[str, str]]:
    event = sample_event(0, event_id=uuid.uuid4(), contacts=contacts)
    event["dossier"]["status"] = status
    if channels is not None:
        event["applicant"]["channels"] = channels
    result = app.ingest.handle(json.dumps(event, ensure_ascii=False), source="test")
    assert result.outcome == "accepted", result.reason
    d = deliveries.c
    with app.database.engine.connect() as connection:
        return {
            row.channel: (row.recipient, row.status)
            for row in connection.execute(
                sa.select(d.channel, d.recipient, d.status).where(d.event_id == result.event_id)
            )
        }


def test_one_of_sends_zalo_by_user_id_when_the_event_carries_one(app: Notifier) -> None:
    found = planned(
        app,
        {"phone": PHONE, "zalo": {"user_id": ZALO_UID, "phone": PHONE}, "portal_account_id": "a"},
    )
    assert found == {"portal": ("a", "queued"), "zalo": (f"uid:{ZALO_UID}", "queued")}


def test_one_of_sends_zns_to_the_phone_when_there_is_no_user_id(app: Notifier) -> None:
    # No Zalo contact at all: ZNS to the applicant's phone costs less than an SMS, and
    # if the phone has no Zalo account the fallback (zalo -> sms) still sends the SMS.
    found = planned(app, {"phone": PHONE, "portal_account_id": "a"})
    assert found["zalo"] == ("+84901888484", "queued")
    assert "sms" not in found


def test_one_of_sends_sms_when_the_citizen_did_not_consent_to_zalo(app: Notifier) -> None:
    found = planned(
        app, {"phone": PHONE, "zalo": {"user_id": ZALO_UID}}, channels=["sms", "portal"]
    )
    assert found == {"sms": ("+84901888484", "queued")}


def test_all_of_stays_as_it_was_for_statuses_without_a_group(app: Notifier) -> None:
    event = sample_event(0, event_id=uuid.uuid4())
    event["dossier"]["status"] = "refused"
    result = app.ingest.handle(json.dumps(event, ensure_ascii=False), source="test")
    assert sorted(c for _d, c in result.to_enqueue) == ["email", "portal", "sms", "zalo"]


def test_an_agency_over_its_budget_gets_only_the_cheaper_channels_when_routing_says_so(
    tmp_path: Path, database: Database
) -> None:
    budgets = {"budgets": {AGENCY: 1000}}
    app = app_with(tmp_path / "a", database, ONE_OF, at_limit="cheaper_only", costs=budgets)
    try:
        # Under budget: as routed.
        before = planned(app, SMS_AND_EMAIL, ["sms", "email"], "refused")
        assert before == {"sms": ("+84901888484", "queued"), "email": ("a@example.vn", "queued")}
        _spend(app.database, AGENCY, 1000)
    finally:
        app.close()
    cheaper = app_with(tmp_path / "b", database, ONE_OF, at_limit="cheaper_only", costs=budgets)
    carry_on = app_with(tmp_path / "c", database, ONE_OF, at_limit="continue", costs=budgets)
    try:
        # Spent: SMS is not a cheaper channel; it is recorded suppressed, email goes.
        after = planned(cheaper, SMS_AND_EMAIL, ["sms", "email"], "refused")
        assert after == {
            "sms": ("+84901888484", "suppressed"),
            "email": ("a@example.vn", "queued"),
        }
        # In a one-of group, the cheaper alternative is taken instead of the dearer one.
        grouped = planned(cheaper, {"phone": PHONE, "portal_account_id": "a"}, ["sms", "zalo"])
        assert grouped == {"zalo": ("+84901888484", "queued")}
        # "continue": the same spent budget changes nothing (the alert still fires).
        same = planned(carry_on, SMS_AND_EMAIL, ["sms", "email"], "refused")
        assert same["sms"] == ("+84901888484", "queued")
    finally:
        cheaper.close()
        carry_on.close()


def _spend(database: Database, agency: str, amount: int) -> None:
    """This month's deliveries of ``agency`` cost ``amount`` in all."""
    d = deliveries.c
    with database.begin() as connection:
        some = connection.execute(
            sa.select(d.delivery_id).where(d.agency_code == agency).limit(1)
        ).scalar_one()
        connection.execute(
            sa.update(deliveries)
            .where(d.delivery_id == some)
            .values(cost_vnd=Decimal(amount), cost_source="estimate", created_at=utcnow())
        )
