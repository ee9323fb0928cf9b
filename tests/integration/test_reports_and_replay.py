"""Reports (counts equal what was seeded; SQLite and PostgreSQL agree) and replay of
dead letters and rejected events: idempotent, admins only, through the normal path,
on the in-process broker and on RabbitMQ."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from notifier_simulators.smtp import SmtpCatcher

from notifier.app import Notifier
from notifier.cli.main import main
from notifier.events import Status
from notifier.ops.replay import Replayer, ReplayOutcome
from notifier.ops.reports import build_report
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.deliveries.log import DeliveryLog, percentile
from notifier.store.operators import OperatorStore
from notifier.store.schema import deliveries, delivery_attempts, rejected_events, utcnow
from notifier.web.api import create_api
from notifier.web.console import views
from tests.integration.test_console import (
    HASH_KEY,
    PASSWORD,
    bearer,
    csrf_of,
    seed_log,
    signed_in,
)
from tests.support import (
    REPO,
    RunningWorker,
    ServedApi,
    make_settings,
    notifier_env,
    rabbit_settings,
    run_on_terminal,
    wait_until,
)

pytestmark = pytest.mark.integration
VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as catcher:
        yield catcher


def email_settings(smtp: SmtpCatcher) -> dict[str, Any]:
    return {"email": {"host": "127.0.0.1", "port": smtp.port}}


@pytest.fixture
def local_app(pg_url: str, pg_database: Database, smtp: SmtpCatcher) -> Iterator[Notifier]:
    """On Dramatiq's in-process broker (a RunningWorker in the test sends)."""
    app = Notifier(
        make_settings(
            database_url=pg_url,
            adapters=email_settings(smtp),
            worker={"min_backoff_ms": 50, "max_backoff_ms": 500, "send_timeout_s": 10},
        )
    )
    yield app
    app.close()


@pytest.fixture
def rabbit_app(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str, smtp: SmtpCatcher
) -> Notifier:
    return Notifier(rabbit_settings(amqp_url, pg_url, queue_prefix, adapters=email_settings(smtp)))


def make_dead_letter(app: Notifier, index: int = 3) -> tuple[str, uuid.UUID]:
    """A real event through ingest (rendered deliveries, nothing enqueued), whose email
    then failed for good after its retries, recorded as the sender records it."""
    event = sample_event(index, status=Status.RESULT_READY, event_id=uuid.uuid4())
    result = app.ingest.handle(json.dumps(event, ensure_ascii=False), source="amqp")
    assert result.outcome == "accepted"
    email_id = next(i for i, channel in result.to_enqueue if channel == "email")
    now = utcnow()
    error = "451 4.3.0 mail server busy"
    with app.database.begin() as connection:
        for number in range(1, 9):
            connection.execute(
                delivery_attempts.insert().values(
                    delivery_id=email_id,
                    number=number,
                    provider="email",
                    started_at=now - timedelta(minutes=9 - number),
                    finished_at=now - timedelta(minutes=9 - number),
                    outcome="temporary-failure" if number < 8 else "permanent-failure",
                    error=error if number < 8 else f"gave up after 8 attempts: {error}",
                    error_code="451",
                )
            )
        connection.execute(
            sa.update(deliveries)
            .where(deliveries.c.delivery_id == email_id)
            .values(
                status="permanent-failure",
                attempts=8,
                provider="email",
                last_error=f"gave up after 8 attempts: {error}",
                exhausted=True,
            )
        )
    return event["dossier"]["code"], email_id


def status_of(database: Database, delivery_id: uuid.UUID) -> tuple[str, int]:
    with database.engine.connect() as connection:
        row = connection.execute(
            sa.select(deliveries.c.status, deliveries.c.attempts).where(
                deliveries.c.delivery_id == delivery_id
            )
        ).one()
    return row.status, row.attempts


def exhausted_of(database: Database, delivery_id: uuid.UUID) -> bool:
    """Whether the delivery is a dead letter: its retries ran out."""
    with database.engine.connect() as connection:
        return bool(
            connection.execute(
                sa.select(deliveries.c.exhausted).where(deliveries.c.delivery_id == delivery_id)
            ).scalar_one()
        )


def outcomes_of(database: Database, delivery_id: uuid.UUID) -> list[str]:
    with database.engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(delivery_attempts.c.outcome)
                .where(delivery_attempts.c.delivery_id == delivery_id)
                .order_by(delivery_attempts.c.attempt_id)
            ).scalars()
        )


def settle(seconds: float = 0.7) -> None:
    """Give a wrongly duplicated message the time to show up."""
    time.sleep(seconds)


# -- reports ----------------------------------------------------------------------------


def test_report_counts_equal_what_was_seeded(
    pg_url: str, pg_database: Database, local_app: Notifier
) -> None:
    seeded = seed_log(pg_database)
    since, until = seeded.now - timedelta(days=7), seeded.now + timedelta(hours=1)
    report = build_report(DeliveryLog(pg_database, HASH_KEY), since, until)

    expected = Counter(
        (r["agency_code"], r["procedure_code"], r["channel"], r["status"]) for r in seeded.rows
    )
    got = {(r.agency_code, r.procedure_code, r.channel, r.status): r.count for r in report.rows}
    assert got == dict(expected)
    assert report.deliveries == len(seeded.rows) == 9
    assert report.events == 4
    assert report.rejected_events == 2
    assert report.totals("channel") == {"email": 4, "portal": 1, "sms": 3, "zalo": 1}
    assert report.totals("agency_code") == {"000.00.12.H29": 6, "000.00.20.H56": 3}

    # Delivery time from the event's occurred_at, computed here independently.
    occurred = {
        code: min(r["created_at"] for r in seeded.rows if r["dossier_code"] == code)
        for code in seeded.dossiers.values()
    }
    samples: dict[str, list[float]] = {}
    for row in seeded.rows:
        if row["sent_at"] is not None:
            seconds = (row["sent_at"] - occurred[row["dossier_code"]]).total_seconds()
            samples.setdefault(row["channel"], []).append(seconds)
    for channel, values in samples.items():
        ordered = sorted(values)
        assert report.latency[channel].count == len(values)
        p = report.latency[channel]
        for q, value in zip((0.5, 0.9, 0.95, 0.99), (p.p50, p.p90, p.p95, p.p99), strict=True):
            assert value == pytest.approx(percentile(ordered, q), abs=1e-3)
    assert report.latency["*"].count == sum(len(v) for v in samples.values())

    # The same figures over HTTP (JSON and CSV) and from the command line.
    keys = ApiKeys(pg_database)
    key = keys.create("monitoring", ["operator"], [])
    with ServedApi(create_api(local_app)) as api:
        params = {"from": since.isoformat(), "to": until.isoformat()}
        as_json = httpx.get(f"{api.base_url}/v1/reports", params=params, headers=bearer(key))
        assert as_json.status_code == 200
        body = as_json.json()
        assert body["deliveries"] == 9
        assert body["by_status"] == dict(Counter(r["status"] for r in seeded.rows))
        as_csv = httpx.get(
            f"{api.base_url}/v1/reports", params={**params, "format": "csv"}, headers=bearer(key)
        )
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        counted = {
            (r["agency_code"], r["procedure_code"], r["channel"], r["status"]): int(r["count"])
            for r in rows
            if r["kind"] == "count"
        }
        assert counted == dict(expected)
        assert {r["channel"] for r in rows if r["kind"] == "latency"} == {*samples, "*"}
        anonymous = httpx.get(f"{api.base_url}/v1/reports", params=params)
        assert anonymous.status_code == 401

    env = {"NOTIFIER_DATABASE_URL": pg_url, "NOTIFIER_CONFIG_DIR": str(REPO / "config")}
    cli = CliRunner().invoke(
        main,
        ["report", "--from", since.isoformat(), "--to", until.isoformat(), "--format", "csv"],
        env=env,
    )
    assert cli.exit_code == 0, cli.output
    cli_rows = list(csv.DictReader(io.StringIO(cli.output)))
    assert sum(int(r["count"]) for r in cli_rows if r["kind"] == "count") == 9
    cli_json = CliRunner().invoke(
        main, ["report", "--from", since.isoformat(), "--to", until.isoformat()], env=env
    )
    assert json.loads(cli_json.output)["by_channel"] == report.totals("channel")


def test_report_for_one_vietnam_day(pg_database: Database, local_app: Notifier) -> None:
    seeded = seed_log(pg_database)
    day = seeded.now.astimezone(VIETNAM).date()
    expected = sum(1 for r in seeded.rows if r["created_at"].astimezone(VIETNAM).date() == day)
    key = ApiKeys(pg_database).create("monitoring", ["operator"], [])
    with ServedApi(create_api(local_app)) as api:
        answer = httpx.get(
            f"{api.base_url}/v1/reports", params={"day": day.isoformat()}, headers=bearer(key)
        )
        assert answer.status_code == 200
        body = answer.json()
        assert body["deliveries"] == expected
        assert body["from"].startswith(f"{day - timedelta(days=1)}T17:00:00")  # 00:00 UTC+7
        bad = httpx.get(f"{api.base_url}/v1/reports", params={"day": "26/11"}, headers=bearer(key))
        assert bad.status_code == 422


def test_sqlite_and_postgresql_give_the_same_report_and_overview(
    sqlite_database: Database, pg_database: Database
) -> None:
    now = utcnow().replace(microsecond=0)
    for database in (sqlite_database, pg_database):  # an empty log has no percentiles
        empty = views.overview(DeliveryLog(database, HASH_KEY), "day", now).as_json()
        assert empty["total"] == 0
        assert empty["median_seconds_event_to_sent"] is None
    seed_log(sqlite_database, now)
    seed_log(pg_database, now)
    results = []
    for database in (sqlite_database, pg_database):
        log = DeliveryLog(database, HASH_KEY)
        report = build_report(log, now - timedelta(days=7), now + timedelta(hours=1)).as_json()
        report.pop("generated_at")
        overviews = {w: views.overview(log, w, now).as_json() for w in views.WINDOWS}
        results.append((report, overviews))
    assert results[0] == results[1]
    assert results[0][1]["day"]["total"] == 8


# -- who may replay ---------------------------------------------------------------------


def test_anonymous_and_read_only_operators_cannot_replay(
    local_app: Notifier, pg_database: Database
) -> None:
    _code, dead = make_dead_letter(local_app)
    reject = uuid.uuid4()
    with pg_database.begin() as connection:
        connection.execute(
            rejected_events.insert().values(
                reject_id=reject,
                received_at=utcnow(),
                source="amqp",
                reason="x",
                payload="{}",
                payload_bytes=2,
            )
        )
    operators = OperatorStore(pg_database)
    operators.add("minh.viewer", PASSWORD, "viewer")
    operators.add("lan.admin", PASSWORD, "admin")
    reader_key = ApiKeys(pg_database).create("dashboards", ["operator"], [])
    sends: list[str] = []
    local_app.deliver_actors["email"].send_with_options = lambda *a, **k: sends.extend(k["args"][0])  # type: ignore[method-assign]

    with ServedApi(create_api(local_app)) as api:
        url = f"{api.base_url}/v1/deliveries/{dead}/replay"
        # Anonymous: 401 on the API, off to sign in on the console.
        assert httpx.post(url).status_code == 401
        assert (
            httpx.post(f"{api.base_url}/v1/rejects/replay", json={"all": True}).status_code == 401
        )
        console_post = httpx.post(
            f"{api.base_url}/console/dead-letters/replay", data={"ids": str(dead)}
        )
        assert console_post.status_code == 303
        assert console_post.headers["location"] == "/console/sign-in"
        # A read-only key and a read-only operator (even with its CSRF token): 403.
        assert httpx.post(url, headers=bearer(reader_key)).status_code == 403
        viewer = signed_in(api.base_url, "minh.viewer")
        token = csrf_of(viewer.get("/console/dead-letters").text)
        assert viewer.post(url, headers={"X-CSRF-Token": token}).status_code == 403
        refused = viewer.post(
            "/console/dead-letters/replay", data={"ids": str(dead), "csrf_token": token}
        )
        assert refused.status_code == 403
        assert "không có quyền" in refused.text
        assert (
            viewer.post(
                "/console/rejects/replay", data={"ids": str(reject), "csrf_token": token}
            ).status_code
            == 403
        )
        assert (
            viewer.post(
                f"/console/deliveries/{dead}/replay", data={"csrf_token": token}
            ).status_code
            == 403
        )
        # An admin without the CSRF token: 403 too.
        admin = signed_in(api.base_url, "lan.admin")
        assert (
            admin.post("/console/dead-letters/replay", data={"ids": str(dead)}).status_code == 403
        )
        assert admin.post(url).status_code == 403
        # Nothing moved.
        assert status_of(pg_database, dead) == ("permanent-failure", 8)
        assert sends == []
        # The admin with the token replays.
        admin_token = csrf_of(admin.get("/console/dead-letters").text)
        done = admin.post(
            "/console/dead-letters/replay",
            data={"ids": str(dead), "csrf_token": admin_token, "scope": "selected"},
        )
        assert done.status_code == 303
        assert "done=1" in done.headers["location"]
    assert sends == [str(dead)]
    assert outcomes_of(pg_database, dead)[-1] == "replayed"
    with pg_database.engine.connect() as connection:
        replayed = connection.execute(
            sa.select(rejected_events.c.replayed_at).where(rejected_events.c.reject_id == reject)
        ).scalar_one()
    assert replayed is None


# -- replay semantics -------------------------------------------------------------------


def test_double_replay_enqueues_once_and_sends_once(
    local_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    _code, dead = make_dead_letter(local_app)
    actor = local_app.deliver_actors["email"]
    enqueued: list[str] = []
    real_send = actor.send_with_options

    def counting_send(*args: Any, **kwargs: Any) -> Any:
        enqueued.extend(kwargs["args"][0])
        return real_send(*args, **kwargs)

    actor.send_with_options = counting_send  # type: ignore[method-assign]
    replayer = Replayer(local_app)
    with RunningWorker(local_app):
        first = replayer.delivery(dead, actor="operator:lan.admin")
        second = replayer.delivery(dead, actor="operator:lan.admin")
        assert first.outcome is ReplayOutcome.REPLAYED
        assert second.outcome is ReplayOutcome.NOT_REPLAYABLE
        wait_until(lambda: len(smtp.messages) == 1)
        wait_until(lambda: status_of(pg_database, dead)[0] == "sent")
        settle()
        third = replayer.delivery(dead, actor="operator:lan.admin")  # sent: nothing to do
    assert third.outcome is ReplayOutcome.NOT_REPLAYABLE
    assert enqueued == [str(dead)]
    assert len(smtp.messages) == 1
    outcomes = outcomes_of(pg_database, dead)
    assert outcomes.count("replayed") == 1
    assert outcomes[-2:] == ["replayed", "sent"]
    assert status_of(pg_database, dead) == ("sent", 1)  # a fresh round of attempts
    with pg_database.engine.connect() as connection:
        note = connection.execute(
            sa.select(delivery_attempts.c.error).where(
                delivery_attempts.c.delivery_id == dead, delivery_attempts.c.outcome == "replayed"
            )
        ).scalar_one()
    assert note.startswith("by operator:lan.admin; was permanent-failure: gave up after 8")


def test_concurrent_replays_of_one_delivery_enqueue_once(
    local_app: Notifier, pg_database: Database
) -> None:
    _code, dead = make_dead_letter(local_app)
    enqueued: list[str] = []
    lock = threading.Lock()

    def counting_send(*args: Any, **kwargs: Any) -> None:
        with lock:
            enqueued.extend(kwargs["args"][0])

    local_app.deliver_actors["email"].send_with_options = counting_send  # type: ignore[method-assign]
    replayer = Replayer(local_app)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: replayer.delivery(dead, actor="t"), range(8)))
    assert Counter(r.outcome for r in results) == {
        ReplayOutcome.REPLAYED: 1,
        ReplayOutcome.NOT_REPLAYABLE: 7,
    }
    assert enqueued == [str(dead)]
    # Queued again with fresh retries: no longer counted among the dead letters.
    assert status_of(pg_database, dead) == ("queued", 0)
    assert exhausted_of(pg_database, dead) is False


def test_a_failed_enqueue_leaves_the_dead_letter_as_it_was(
    local_app: Notifier, pg_database: Database
) -> None:
    _code, dead = make_dead_letter(local_app)

    def broken_send(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    local_app.deliver_actors["email"].send_with_options = broken_send  # type: ignore[method-assign]
    result = Replayer(local_app).delivery(dead, actor="t")
    assert result.outcome is ReplayOutcome.FAILED
    assert status_of(pg_database, dead) == ("permanent-failure", 8)
    assert exhausted_of(pg_database, dead) is True  # still a dead letter
    assert outcomes_of(pg_database, dead)[-2:] == ["replayed", "replay-failed"]


def test_filtered_replay_skips_those_told_by_a_fallback(
    local_app: Notifier, pg_database: Database
) -> None:
    seeded = seed_log(pg_database)
    sends: list[str] = []
    local_app.deliver_actors["email"].send_with_options = lambda *a, **k: sends.extend(k["args"][0])  # type: ignore[method-assign]
    replayer = Replayer(local_app)
    dry = replayer.deliveries(views.dead_letter_query("permanent"), actor="t", dry_run=True)
    assert {r.id: r.outcome for r in dry} == {
        seeded.deliveries["d1_zalo"]: ReplayOutcome.TOLD_BY_FALLBACK,
        seeded.deliveries["d2_email"]: ReplayOutcome.REPLAYED,
    }
    assert sends == []
    done = replayer.deliveries(views.dead_letter_query("permanent"), actor="t")
    assert {r.id: r.outcome for r in done} == {
        seeded.deliveries["d1_zalo"]: ReplayOutcome.TOLD_BY_FALLBACK,
        seeded.deliveries["d2_email"]: ReplayOutcome.REPLAYED,
    }
    assert sends == [str(seeded.deliveries["d2_email"])]
    forced = replayer.deliveries(
        views.dead_letter_query("permanent"), actor="t", include_told_by_fallback=True
    )
    # Zalo is not enabled in this deployment: kept as it is, with the reason.
    assert [(r.id, r.outcome) for r in forced] == [
        (seeded.deliveries["d1_zalo"], ReplayOutcome.CHANNEL_OFF)
    ]
    assert status_of(pg_database, seeded.deliveries["d1_zalo"])[0] == "permanent-failure"


def test_replayed_rejects_go_through_ingest_once(
    local_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    fixed = sample_event(5, status=Status.RESULT_READY, event_id=uuid.uuid4())
    already = sample_event(6, status=Status.RESULT_READY, event_id=uuid.uuid4())
    truncated = uuid.uuid4()
    rows = {}
    with pg_database.begin() as connection:
        for name, payload, size in [
            ("fixed", json.dumps(fixed, ensure_ascii=False), None),
            ("already", json.dumps(already, ensure_ascii=False), None),
            ("truncated", '{"schema_version": "1", "event_id"', 300_000),
        ]:
            reject_id = truncated if name == "truncated" else uuid.uuid4()
            connection.execute(
                rejected_events.insert().values(
                    reject_id=reject_id,
                    received_at=utcnow(),
                    source="amqp",
                    reason="no usable contact (routing since fixed)",
                    payload=payload,
                    payload_raw=payload.encode(),
                    submitter_kind="service",
                    submitter_name="notifier",
                    submitter_agencies=["*"],
                    payload_bytes=size or len(payload.encode()),
                )
            )
            rows[name] = reject_id
    replayer = Replayer(local_app)
    with RunningWorker(local_app):
        # The "already" event was meanwhile accepted (and its email sent).
        local_app.submit(json.dumps(already, ensure_ascii=False).encode(), source="amqp")
        wait_until(lambda: len(smtp.messages) == 1)
        assert replayer.reject(rows["fixed"], actor="t").outcome is ReplayOutcome.REPLAYED
        assert replayer.reject(rows["fixed"], actor="t").outcome is ReplayOutcome.NOT_REPLAYABLE
        assert replayer.reject(rows["already"], actor="t").outcome is ReplayOutcome.REPLAYED
        no_payload = replayer.reject(rows["truncated"], actor="t")
        assert no_payload.outcome is ReplayOutcome.NO_PAYLOAD
        wait_until(lambda: len(smtp.messages) == 2)
        settle(1.0)
    assert len(smtp.messages) == 2  # the already accepted event sent nothing twice
    log = DeliveryLog(pg_database, HASH_KEY)
    assert len(log.dossier(fixed["dossier"]["code"]).deliveries) == 2  # email + portal
    with pg_database.engine.connect() as connection:
        replayed = {
            row.reject_id: row.replayed_at
            for row in connection.execute(
                sa.select(rejected_events.c.reject_id, rejected_events.c.replayed_at)
            )
        }
    assert replayed[rows["fixed"]] is not None
    assert replayed[rows["truncated"]] is None
    assert len(replayed) == 3  # nothing was rejected again


# -- on RabbitMQ ------------------------------------------------------------------------


def test_replay_over_http_on_rabbitmq_sends_again_exactly_once(
    rabbit_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    _code, dead = make_dead_letter(rabbit_app)
    admin_key = ApiKeys(pg_database).create("ops-scripts", ["admin"], [])
    with RunningWorker(rabbit_app), ServedApi(create_api(rabbit_app)) as api:
        url = f"{api.base_url}/v1/deliveries/{dead}/replay"
        first = httpx.post(url, headers=bearer(admin_key))
        second = httpx.post(url, headers=bearer(admin_key))
        assert first.json()["outcome"] == "replayed"
        assert second.json()["outcome"] == "not-replayable"
        wait_until(lambda: len(smtp.messages) == 1)
        wait_until(lambda: status_of(pg_database, dead)[0] == "sent")
        settle(1.0)
        again = httpx.post(
            f"{api.base_url}/v1/dead-letters/replay", json={"all": True}, headers=bearer(admin_key)
        )
        assert again.json()["summary"] == {}
        empty = httpx.post(
            f"{api.base_url}/v1/dead-letters/replay", json={}, headers=bearer(admin_key)
        )
        assert empty.status_code == 422  # an empty body never replays everything
    assert len(smtp.messages) == 1


def _json_lines(output: str) -> list[dict[str, object]]:
    """The JSON objects among an output's lines (other lines are skipped)."""
    found = []
    for line in output.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def test_cli_replay_on_rabbitmq(
    rabbit_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    code, dead = make_dead_letter(rabbit_app)
    settings = rabbit_app.settings
    env = {
        "NOTIFIER_BROKER_URL": settings.broker_url,
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_EVENTS__EXCHANGE": settings.events.exchange,
        "NOTIFIER_EVENTS__QUEUE": settings.events.queue,
        "NOTIFIER_WORKER__QUEUE_PREFIX": settings.worker.queue_prefix,
        "NOTIFIER_ADAPTERS__EMAIL__HOST": "127.0.0.1",
        "NOTIFIER_ADAPTERS__EMAIL__PORT": str(smtp.port),
        "NOTIFIER_CONFIG_DIR": str(REPO / "config"),
        "NOTIFIER_LOG_FORMAT": "json",
    }
    runner = CliRunner()
    refused = runner.invoke(main, ["replay", "dead-letters"], env=env)
    assert refused.exit_code == 2
    assert "--all" in refused.output
    listed = runner.invoke(main, ["dead-letters", "--json"], env=env)
    assert [json.loads(line)["delivery_id"] for line in listed.output.splitlines()] == [str(dead)]
    dry = runner.invoke(main, ["replay", "dead-letters", "--dossier", code, "--dry-run"], env=env)
    assert "dry run" in dry.output
    assert status_of(pg_database, dead)[0] == "permanent-failure"
    with RunningWorker(rabbit_app):
        done = runner.invoke(main, ["replay", "dead-letters", "--dossier", code, "--json"], env=env)
        assert done.exit_code == 0, done.output
        # The worker runs in this process, so its log lines may land in the captured
        # output too: the command's answer is the JSON line that names an outcome.
        answers = [a for a in _json_lines(done.output) if "outcome" in a]
        assert [a["outcome"] for a in answers] == ["replayed"], done.output
        again = runner.invoke(main, ["replay", "delivery", str(dead)], env=env)
        assert "not-replayable" in again.output
        wait_until(lambda: len(smtp.messages) == 1)
        settle(1.0)
    assert len(smtp.messages) == 1
    embedded = runner.invoke(
        main, ["replay", "delivery", str(dead)], env={**env, "NOTIFIER_BROKER_URL": "memory://"}
    )
    assert embedded.exit_code == 1
    assert "needs RabbitMQ" in embedded.output


# -- deliveries held as unknown --------------------------------------------------------


def make_unknown(app: Notifier, index: int = 5) -> tuple[str, uuid.UUID]:
    """A real email delivery held as unknown, as the sender holds it."""
    code, email_id = make_dead_letter(app, index)
    with app.database.begin() as connection:
        connection.execute(
            sa.update(deliveries)
            .where(deliveries.c.delivery_id == email_id)
            .values(
                status="unknown",
                dispatch_provider="email",
                dispatch_attempt=8,
                last_error="outcome of the call to email unknown; held for an admin",
            )
        )
    return code, email_id


def test_only_an_admin_with_the_csrf_token_resolves_an_unknown_delivery_in_the_console(
    local_app: Notifier, pg_database: Database
) -> None:
    code, held = make_unknown(local_app)
    _code2, other = make_unknown(local_app, index=7)
    operators = OperatorStore(pg_database)
    operators.add("minh.viewer", PASSWORD, "viewer")
    operators.add("lan.admin", PASSWORD, "admin")
    sends: list[str] = []
    local_app.deliver_actors["email"].send_with_options = lambda *a, **k: sends.extend(k["args"][0])  # type: ignore[method-assign]

    with ServedApi(create_api(local_app)) as api:
        resolve = f"/console/deliveries/{held}/resolve"
        viewer = signed_in(api.base_url, "minh.viewer")
        page = viewer.get(f"/console/dossiers/{code}")
        assert "resolve-resend" not in page.text  # no buttons for a viewer
        token = csrf_of(page.text)
        refused = viewer.post(resolve, data={"resolution": "resend", "csrf_token": token})
        assert refused.status_code == 403
        admin = signed_in(api.base_url, "lan.admin")
        assert admin.post(resolve, data={"resolution": "resend"}).status_code == 403
        assert status_of(pg_database, held)[0] == "unknown"
        page = admin.get(f"/console/dossiers/{code}")
        assert "resolve-resend" in page.text
        assert "resolve-mark-sent" in page.text
        admin_token = csrf_of(page.text)
        assert (
            admin.post(resolve, data={"resolution": "maybe", "csrf_token": admin_token}).status_code
            == 400
        )
        done = admin.post(resolve, data={"resolution": "resend", "csrf_token": admin_token})
        assert done.status_code == 303
        assert "done=replayed" in done.headers["location"]
        marked = admin.post(
            f"/console/deliveries/{other}/resolve",
            data={"resolution": "mark-sent", "csrf_token": admin_token},
        )
        assert "done=marked-sent" in marked.headers["location"]
    assert sends == [str(held)]
    assert status_of(pg_database, held) == ("queued", 0)
    assert outcomes_of(pg_database, held)[-1] == "resolved:resend"
    assert status_of(pg_database, other)[0] == "sent"
    assert outcomes_of(pg_database, other)[-1] == "resolved:mark-sent"


def test_the_api_resolves_an_unknown_delivery_for_an_admin_key_only(
    local_app: Notifier, pg_database: Database
) -> None:
    _code, held = make_unknown(local_app)
    keys = ApiKeys(pg_database)
    reader, admin = keys.create("dash", ["operator"], []), keys.create("ops", ["admin"], [])
    with ServedApi(create_api(local_app)) as api:
        url = f"{api.base_url}/v1/deliveries/{held}/resolve"
        body = {"resolution": "mark-sent"}
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers=bearer(reader)).status_code == 403
        wrong = httpx.post(url, json={"resolution": "maybe"}, headers=bearer(admin))
        assert wrong.status_code == 422
        assert status_of(pg_database, held)[0] == "unknown"
        done = httpx.post(url, json=body, headers=bearer(admin))
        assert done.json()["outcome"] == "marked-sent"
        again = httpx.post(url, json=body, headers=bearer(admin))
        assert again.json()["outcome"] == "not-replayable"
    assert status_of(pg_database, held)[0] == "sent"
    assert outcomes_of(pg_database, held)[-1] == "resolved:mark-sent"


def test_the_cli_lists_unknown_deliveries_and_refuses_a_status_that_does_not_exist(
    local_app: Notifier, pg_url: str
) -> None:
    _code, held = make_unknown(local_app)
    env = {"NOTIFIER_DATABASE_URL": pg_url, "NOTIFIER_CONFIG_DIR": str(REPO / "config")}
    listed = CliRunner().invoke(main, ["deliveries", "--status", "unknown", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["delivery_id"] for line in listed.output.splitlines()] == [str(held)]
    wrong = CliRunner().invoke(main, ["deliveries", "--status", "unknwon"], env=env)
    assert wrong.exit_code == 2
    assert "unknown" in wrong.output


def test_cli_replay_of_dead_letters_shows_a_progress_bar_on_a_terminal_only(
    rabbit_app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    code, dead = make_dead_letter(rabbit_app)
    env = notifier_env(
        rabbit_app.settings,
        NOTIFIER_ADAPTERS__EMAIL__HOST="127.0.0.1",
        NOTIFIER_ADAPTERS__EMAIL__PORT=str(smtp.port),
        NOTIFIER_LOG_LEVEL="WARNING",
    )
    on_terminal = run_on_terminal(["replay", "dead-letters", "--dossier", code], env)
    assert re.search(r"replaying\s+\[#+\]\s+1/1", on_terminal), on_terminal
    assert f"delivery {dead}: replayed" in on_terminal
    assert "summary: replayed 1" in on_terminal
    # Piped, a second time: nothing left to replay, no bar, the same parseable summary.
    piped = CliRunner().invoke(main, ["replay", "dead-letters", "--dossier", code], env=env)
    assert piped.exit_code == 0, piped.output
    assert "replaying" not in piped.output
    assert piped.output.splitlines()[-1] == "summary: nothing"
