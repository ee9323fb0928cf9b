"""The citizen's choice (issue 18): preferences at planning and at send time, quiet
hours in Vietnam time, frequency caps and the identical-content window, on PostgreSQL
with the real local providers (eSMS simulator, SMTP catcher) and a controlled clock."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import time_machine
from notifier_simulators.local import LocalProviders

from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.pipeline.bridge import ingest_arguments
from notifier.store import Database
from notifier.store.optouts import OptOutStore
from notifier.store.preferences import IdentityKind, Preference, PreferenceStore
from notifier.store.schema import deliveries, inbox_notifications, status_outbox
from tests.support import RunningWorker, make_settings, wait_until

PHONE = "0901 234 567"
ACCOUNT = "vneid-0042"
EMAIL = "minh.khai@example.vn"


def vn(text: str) -> datetime:
    """A Vietnam wall-clock time ("2026-12-03 21:00") as UTC."""
    return datetime.fromisoformat(text + "+07:00").astimezone(UTC)


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as running:
        yield running


@pytest.fixture
def app(pg_database: Database, providers: LocalProviders) -> Iterator[Notifier]:
    app = Notifier(
        make_settings(
            database_url=pg_database.url,
            choice={"quiet_hours": True, "frequency_caps": True},
            worker={"min_backoff_ms": 20, "max_backoff_ms": 200, "send_timeout_s": 10},
            **providers.settings_overrides(),
        )
    )
    yield app
    app.close()


def preferences(app: Notifier) -> PreferenceStore:
    return PreferenceStore(app.database, app.settings.recipient_hash_key.get_secret_value())


def event(status: Status = Status.RESULT_READY, index: int = 7, **contacts: Any) -> dict[str, Any]:
    return sample_event(
        index,
        status=status,
        event_id=uuid.uuid4(),
        contacts=contacts or {"phone": PHONE, "email": EMAIL, "portal_account_id": ACCOUNT},
    )


def ingest(app: Notifier, *events: dict[str, Any]) -> None:
    for item in events:
        result = app.ingest.handle(json.dumps(item, ensure_ascii=False), source="test")
        assert result.outcome == "accepted", result.reason
        app.enqueue_deliveries(result.to_enqueue)


def rows(app: Notifier, event_id: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(deliveries).order_by(deliveries.c.created_at)
    if event_id is not None:
        query = query.where(deliveries.c.event_id == uuid.UUID(event_id))
    with app.database.engine.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(query)]


def by_channel(app: Notifier, event_id: str) -> dict[str, dict[str, Any]]:
    return {r["channel"]: r for r in rows(app, event_id)}


# -- preferences at planning -------------------------------------------------------------


def test_a_channel_the_citizen_turned_off_is_suppressed_with_the_reason_and_the_portal_kept(
    app: Notifier,
) -> None:
    preferences(app).put(
        IdentityKind.ACCOUNT,
        ACCOUNT,
        Preference(channels_off=frozenset({"sms", "email"})),
        changed_by="test",
    )
    routine = event(Status.RESULT_READY)
    ingest(app, routine)
    found = by_channel(app, routine["event_id"])
    assert found["sms"]["status"] == "suppressed"
    assert found["sms"]["suppressed_reason"] == "channel_off"
    assert found["email"]["suppressed_reason"] == "channel_off"
    assert found["portal"]["status"] == "queued"


def test_a_mandatory_status_goes_by_every_channel_whatever_the_citizen_chose(
    app: Notifier,
) -> None:
    preferences(app).put(
        IdentityKind.PHONE, "+84901234567", Preference(frozenset({"sms"})), changed_by="test"
    )
    notice = event(Status.REFUSED)  # mandatory in config/routing.toml
    ingest(app, notice)
    found = by_channel(app, notice["event_id"])
    assert found["sms"]["status"] in ("queued", "scheduled")  # scheduled: quiet hours
    assert found["sms"]["suppressed_reason"] is None


def test_when_every_routed_channel_is_off_the_portal_inbox_still_gets_it(
    app: Notifier,
) -> None:
    # "submitted" goes to portal and email; an agency that routes it to email only
    # would leave the citizen nothing: the portal copy is added.
    only_email = event(Status.SUBMITTED)
    app.routing.agencies[only_email["agency"]["code"]] = {Status.SUBMITTED: ("email",)}
    preferences(app).put(
        IdentityKind.EMAIL, EMAIL.upper(), Preference(frozenset({"email"})), changed_by="test"
    )
    ingest(app, only_email)
    found = by_channel(app, only_email["event_id"])
    assert found["email"]["status"] == "suppressed"
    assert found["portal"]["status"] == "queued"


def test_the_language_the_citizen_chose_renders_the_message(app: Notifier) -> None:
    preferences(app).put(
        IdentityKind.ACCOUNT, ACCOUNT, Preference(language="en"), changed_by="test"
    )
    sent = event(Status.RECEIVED)
    sent["applicant"]["language"] = "vi"
    ingest(app, sent)
    assert {r["language"] for r in rows(app, sent["event_id"])} == {"en"}


# -- after planning: the send-time gate --------------------------------------------------


def test_an_opt_out_or_a_choice_made_after_planning_stops_a_queued_delivery(
    app: Notifier, providers: LocalProviders
) -> None:
    with time_machine.travel(vn("2026-12-03 10:00"), tick=True):
        first, second = event(Status.RESULT_READY), event(Status.PAYMENT_REQUIRED, index=8)
        for item in (first, second):
            result = app.ingest.handle(json.dumps(item, ensure_ascii=False), source="test")
            assert {c for _, c in result.to_enqueue} >= {"sms", "email"}
        # Queued, not yet sent: the citizen replies STOP, and turns email off.
        OptOutStore(app.database, app.settings.recipient_hash_key.get_secret_value()).add(
            PHONE, "sms", "sms-stop:esms"
        )
        preferences(app).put(
            IdentityKind.ACCOUNT, ACCOUNT, Preference(frozenset({"email"})), changed_by="test"
        )
        with RunningWorker(app):
            app.enqueue_deliveries(
                (r["delivery_id"], r["channel"]) for r in rows(app) if r["status"] == "queued"
            )
            wait_until(lambda: all(r["status"] not in ("queued", "sending") for r in rows(app)))
    for item in (first, second):
        found = by_channel(app, item["event_id"])
        assert (found["sms"]["status"], found["sms"]["suppressed_reason"]) == (
            "suppressed",
            "opted_out",
        )
        assert (found["email"]["status"], found["email"]["suppressed_reason"]) == (
            "suppressed",
            "channel_off",
        )
        assert found["portal"]["status"] == "delivered"
        assert found["sms"]["attempts"] == 0  # no provider was called
    assert providers.esms.messages == []
    assert providers.speedsms.messages == []
    assert providers.smtp.messages == []
    # A suppression at send time is announced to the publisher like any final status.
    with app.database.engine.connect() as connection:
        announced = {
            (body["delivery"]["id"], body["type"])
            for body in connection.execute(sa.select(status_outbox.c.body)).scalars()
            if body["delivery"] is not None
        }
    for item in (first, second):
        found = by_channel(app, item["event_id"])
        for channel in ("sms", "email"):
            assert (str(found[channel]["delivery_id"]), "delivery.suppressed") in announced


# -- quiet hours ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("planned_at", "due_at"),
    [
        ("2026-12-03 20:59", None),
        ("2026-12-03 21:00", "2026-12-04 07:00"),
        ("2026-12-03 23:59", "2026-12-04 07:00"),
        ("2026-12-04 00:00", "2026-12-04 07:00"),  # across midnight: the same morning
        ("2026-12-04 06:59", "2026-12-04 07:00"),
        ("2026-12-04 07:00", None),
    ],
)
def test_sms_and_zalo_planned_in_quiet_hours_are_held_to_the_windows_end_in_vietnam_time(
    app: Notifier, planned_at: str, due_at: str | None
) -> None:
    with time_machine.travel(vn(planned_at), tick=False):
        notice = event(Status.RESULT_READY, phone=PHONE, email=EMAIL, portal_account_id=ACCOUNT)
        notice["applicant"]["contacts"]["zalo"] = {"phone": PHONE}
        ingest(app, notice)
    found = by_channel(app, notice["event_id"])
    for channel in ("sms", "zalo"):
        if due_at is None:
            assert found[channel]["status"] == "queued", channel
        else:
            assert found[channel]["status"] == "scheduled", channel
            assert found[channel]["hold_reason"] == "quiet_hours"
            assert found[channel]["due_at"] == vn(due_at)
    # Email and the portal are never held.
    assert found["email"]["status"] == "queued"
    assert found["portal"]["status"] == "queued"


def test_urgent_statuses_agency_windows_and_a_citizen_without_quiet_hours_are_not_held(
    app: Notifier,
) -> None:
    choices = app.routing.choices
    with time_machine.travel(vn("2026-12-03 22:30"), tick=False):
        object.__setattr__(choices, "urgent", frozenset({"stopped"}))
        urgent = event(Status.STOPPED)
        ingest(app, urgent)
        assert by_channel(app, urgent["event_id"])["sms"]["status"] == "queued"
        preferences(app).put(
            IdentityKind.ACCOUNT, ACCOUNT, Preference(quiet_hours=False), changed_by="test"
        )
        awake = event(Status.RESULT_READY)
        ingest(app, awake)
        assert by_channel(app, awake["event_id"])["sms"]["status"] == "queued"


def test_held_sms_are_sent_exactly_once_at_the_windows_end_on_postgresql(
    app: Notifier, providers: LocalProviders
) -> None:
    with time_machine.travel(vn("2026-12-03 23:30"), tick=True) as clock, RunningWorker(app):
        notices = [
            event(Status.RESULT_READY, index=i, phone=f"09123450{i:02d}", portal_account_id="a")
            for i in range(5)
        ]
        ingest(app, *notices)
        wait_until(
            lambda: all(r["status"] == "delivered" for r in rows(app) if r["channel"] == "portal")
        )
        assert {r["status"] for r in rows(app) if r["channel"] == "sms"} == {"scheduled"}
        clock.move_to(vn("2026-12-04 06:59:59"))
        assert app.sweeper.sweep() == 0
        clock.move_to(vn("2026-12-04 07:00"))
        assert app.sweeper.sweep() == 5
        wait_until(lambda: len(providers.esms.messages) == 5)
        assert app.sweeper.sweep() == 0
    sms = [r for r in rows(app) if r["channel"] == "sms"]
    assert {r["status"] for r in sms} == {"sent"}
    assert sorted(m.national_phone for m in providers.esms.messages) == sorted(
        f"09123450{i:02d}" for i in range(5)
    )


# -- frequency caps and floods ----------------------------------------------------------


def test_over_the_hourly_cap_a_delivery_is_held_to_the_next_free_slot(
    app: Notifier, providers: LocalProviders
) -> None:
    statuses = [
        Status.STOPPED,
        Status.REFUSED,
        Status.SUPPLEMENT_REQUESTED,
        Status.PAYMENT_REQUIRED,
        Status.RESULT_READY,
    ]
    start = vn("2026-12-03 10:00")
    with time_machine.travel(start, tick=True) as clock, RunningWorker(app):
        for status in statuses:
            ingest(app, event(status, phone=PHONE))
            clock.shift(timedelta(seconds=1))
        wait_until(lambda: all(r["status"] not in ("queued", "sending") for r in rows(app)))
        sms = [r for r in rows(app) if r["channel"] == "sms"]
        assert Counter(r["status"] for r in sms) == {"sent": 3, "scheduled": 2}
        held = [r for r in sms if r["status"] == "scheduled"]
        assert {r["hold_reason"] for r in held} == {"frequency_cap"}
        first_counted = min(r["counted_at"] for r in sms if r["status"] == "sent")
        assert min(r["due_at"] for r in held) == first_counted + timedelta(hours=1)
        clock.move_to(first_counted + timedelta(hours=1, seconds=1))
        app.sweeper.sweep()
        wait_until(lambda: len(providers.esms.messages) >= 4)
    assert len(providers.esms.messages) <= 5


def test_a_flood_of_identical_events_sends_at_most_the_cap_and_loses_nothing_from_the_inbox(
    app: Notifier, providers: LocalProviders
) -> None:
    """A runaway TTHC system: 1,000 identical events (one dossier, one phone) in a minute."""
    cap = app.routing.choices.cap_for("sms")
    assert cap is not None
    assert cap.per_hour is not None
    flood = []
    for _ in range(1000):
        item = sample_event(
            3,
            status=Status.RESULT_READY,
            event_id=uuid.uuid4(),
            contacts={"phone": PHONE, "portal_account_id": ACCOUNT},
        )
        flood.append(item)
    with time_machine.travel(vn("2026-12-03 10:00"), tick=True), RunningWorker(app, threads=8):
        max_bytes = app.settings.events.max_bytes
        for start in range(0, len(flood), 100):
            app.ingest_actor.send(
                [
                    ingest_arguments(json.dumps(e, ensure_ascii=False).encode(), max_bytes, None)
                    for e in flood[start : start + 100]
                ],
                "test",
            )
        wait_until(
            lambda: (
                len(rows(app)) == 2000
                and all(r["status"] not in ("queued", "sending") for r in rows(app))
            ),
            timeout=180,
        )
    everything = rows(app)
    sms = [r for r in everything if r["channel"] == "sms"]
    assert len(sms) == 1000
    sent = len(providers.esms.messages) + len(providers.speedsms.messages)
    assert 1 <= sent <= cap.per_hour
    # The excess is kept, with its reason.
    reasons = Counter((r["status"], r["suppressed_reason"] or r["hold_reason"]) for r in sms)
    assert reasons[("suppressed", "duplicate_content")] == 1000 - sent
    # Nothing lost from the portal inbox.
    with app.database.engine.connect() as connection:
        inbox = connection.execute(
            sa.select(sa.func.count()).select_from(inbox_notifications)
        ).scalar_one()
    assert inbox == 1000


# -- what operators see ------------------------------------------------------------------


def test_operators_see_held_and_suppressed_counts_per_reason_apart_from_failures(
    app: Notifier, pg_database: Database
) -> None:
    from click.testing import CliRunner

    from notifier.cli.main import main as cli
    from notifier.ops.metrics import sample_value
    from notifier.ops.reports import build_report
    from notifier.store.apikeys import ApiKeys
    from notifier.store.deliveries.log import DeliveryLog
    from notifier.store.operators import OperatorStore
    from notifier.web.api import create_api
    from tests.integration.test_console import signed_in
    from tests.support import ServedApi, notifier_env

    preferences(app).put(
        IdentityKind.ACCOUNT, ACCOUNT, Preference(frozenset({"email"})), changed_by="test"
    )
    with time_machine.travel(vn("2026-12-03 22:00"), tick=False):
        ingest(app, event(Status.RESULT_READY), event(Status.PAYMENT_REQUIRED, index=8))
    log = DeliveryLog(pg_database, app.settings.recipient_hash_key.get_secret_value())
    since, until = vn("2026-12-03 00:00"), vn("2026-12-05 00:00")
    report = build_report(log, since, until)
    assert report.reason_totals() == {
        "scheduled:quiet_hours": 2,
        "suppressed:channel_off": 2,
    }
    assert report.as_json()["by_reason"] == report.reason_totals()
    assert "reason,,,sms,scheduled:quiet_hours,2" in report.as_csv().replace(
        f"{since.isoformat()},{until.isoformat()},", ""
    )
    # Not failures: the failure rate's statuses do not include them.
    assert "permanent-failure" not in report.totals("status")
    # The CLI's report table.
    env = notifier_env(app.settings)
    result = CliRunner().invoke(
        cli,
        ["report", "--from", "2026-12-03", "--to", "2026-12-05", "--format", "table"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "quiet_hours" in result.output
    assert "channel_off" in result.output
    # The CLI's delivery search shows the held ones, with their due time and reason.
    held = CliRunner().invoke(cli, ["deliveries", "--status", "scheduled", "--json"], env=env)
    assert held.exit_code == 0, held.output
    lines = [json.loads(line) for line in held.output.splitlines() if line.startswith("{")]
    assert [(x["channel"], x["hold_reason"]) for x in lines] == [("sms", "quiet_hours")] * 2
    assert {x["due_at"] for x in lines} == {vn("2026-12-04 07:00").isoformat()}
    # Metrics and the console's report page.
    keys = ApiKeys(pg_database)
    scraper = keys.create("prometheus", ["metrics"], [])
    OperatorStore(pg_database).add("minh.viewer", "correct horse battery staple 42", "viewer")
    with ServedApi(create_api(app)) as served:
        text = httpx.get(
            f"{served.base_url}/metrics", headers={"Authorization": f"Bearer {scraper}"}
        ).text
        assert (
            sample_value(
                text,
                "notifier_deliveries_by_reason",
                channel="sms",
                kind="scheduled",
                reason="quiet_hours",
            )
            == 2
        )
        assert (
            sample_value(
                text,
                "notifier_deliveries_suppressed_total",
                channel="email",
                reason="channel_off",
            )
            == 2
        )
        client = signed_in(served.base_url, "minh.viewer", "correct horse battery staple 42")
        page = client.get("/console/reports", params={"from": "2026-12-03", "to": "2026-12-05"})
        assert page.status_code == 200
        assert 'id="reasons"' in page.text
        assert "giờ yên tĩnh" in page.text  # the console's default language is Vietnamese
        assert "công dân đã tắt kênh" in page.text
        dossier = client.get(f"/console/dossiers/{lines[0]['dossier_code']}")
        assert dossier.status_code == 200
        assert "Giữ lại đến" in dossier.text  # held until 07:00
        assert "Đang giữ lại: giờ yên tĩnh" in dossier.text
        assert "Không gửi: công dân đã tắt kênh" in dossier.text


def test_a_retry_keeps_its_place_under_the_cap_and_is_not_taken_for_a_copy_of_itself(
    app: Notifier, providers: LocalProviders
) -> None:
    # Both gateways answer 503 once: the first try fails for both, the retry is sent.
    providers.esms.fail_next_http(1, 503)
    providers.speedsms.fail_next_http(1, 503)
    with time_machine.travel(vn("2026-12-03 10:00"), tick=True), RunningWorker(app):
        ingest(app, event(Status.RESULT_READY, phone=PHONE))
        wait_until(lambda: [r for r in rows(app) if r["channel"] == "sms" and r["sent_at"]])
    [sms] = [r for r in rows(app) if r["channel"] == "sms"]
    assert sms["status"] == "sent"
    assert sms["attempts"] == 2
    assert sms["suppressed_reason"] is None
    assert len(providers.esms.messages) + len(providers.speedsms.messages) == 1


def test_a_delivery_due_inside_quiet_hours_is_held_again_to_the_morning_at_send_time(
    app: Notifier, providers: LocalProviders
) -> None:
    """Planned at 20:59 (not held), sent only at 21:00: the send-time gate holds it."""
    with time_machine.travel(vn("2026-12-03 20:59"), tick=False) as clock:
        late = event(Status.RESULT_READY, phone=PHONE)
        result = app.ingest.handle(json.dumps(late, ensure_ascii=False), source="test")
        assert by_channel(app, late["event_id"])["sms"]["status"] == "queued"
        clock.move_to(vn("2026-12-03 21:00"))
        outcomes = app.sender.send([d for d, c in result.to_enqueue if c == "sms"])
    assert [o.status for o in outcomes] == ["scheduled"]
    sms = by_channel(app, late["event_id"])["sms"]
    assert (sms["status"], sms["hold_reason"]) == ("scheduled", "quiet_hours")
    assert sms["due_at"] == vn("2026-12-04 07:00")
    assert sms["attempts"] == 0
    assert providers.esms.messages == []
