"""The HTTP API and the CLI on the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from notifier_simulators.smtp import SmtpCatcher

from notifier.app import Notifier
from notifier.cli.demo import prepare_serving
from notifier.cli.main import main
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.deliveries.log import DeliveryLog, DeliveryQuery
from notifier.store.operators import OperatorStore
from notifier.store.schema import events
from notifier.testing import capture_logs
from notifier.web.api import create_api
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


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as catcher:
        yield catcher


@pytest.fixture
def app(
    amqp_url: str, pg_url: str, pg_database: Database, queue_prefix: str, smtp: SmtpCatcher
) -> Notifier:
    return Notifier(
        rabbit_settings(amqp_url, pg_url, queue_prefix, adapters={"email": {"port": smtp.port}})
    )


def test_http_submission_is_authenticated_scoped_and_delivered(
    app: Notifier, pg_database: Database, smtp: SmtpCatcher
) -> None:
    keys = ApiKeys(pg_database)
    publisher = keys.create("motcua-hanoi", ["publish"], ["000.00.12.H29"])
    reader = keys.create("portal", ["inbox"], [])
    revoked = keys.create("old", ["publish"], [])
    keys.revoke("old")
    event = sample_event(0, event_id=uuid.uuid4())  # agency 000.00.12.H29
    other_agency = sample_event(1, event_id=uuid.uuid4())  # agency 000.00.20.H56

    with RunningWorker(app), ServedApi(create_api(app)) as api:
        url = f"{api.base_url}/v1/events"

        def post(body: bytes | dict[str, object], key: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            return httpx.post(url, content=content, headers=headers)

        assert post(event, None).status_code == 401
        assert post(event, "ntf_wrong").status_code == 401
        assert post(event, revoked).status_code == 401
        assert post(event, reader).status_code == 403  # no publish scope
        assert post(other_agency, publisher).status_code == 403  # not its agency
        invalid = post(b'{"schema_version": "1"}', publisher)
        assert invalid.status_code == 422
        assert "event_id" in json.dumps(invalid.json())
        assert post(b"x" * 300_000, publisher).status_code == 413
        accepted = post(event, publisher)
        assert accepted.status_code == 202
        assert accepted.json()["event_id"] == event["event_id"]
        # It went through RabbitMQ and the worker, like a published event.
        wait_until(lambda: len(smtp.messages) == 1)

    log = DeliveryLog(pg_database, app.settings.recipient_hash_key.get_secret_value())
    rejects = log.rejects()
    assert len(rejects) == 1
    assert rejects[0].source == "http"
    found = log.search(DeliveryQuery(recipient=event["applicant"]["contacts"]["email"].upper()))
    assert [row.channel for row in found] == ["email"]
    assert found[0].recipient.startswith("c***@")


def test_inbox_stream_pushes_new_notifications(app: Notifier, pg_database: Database) -> None:
    reader = ApiKeys(pg_database).create("portal", ["inbox"], [])
    received: list[str] = []
    connected = threading.Event()

    with ServedApi(create_api(app)) as api:

        def listen() -> None:
            with httpx.stream(
                "GET",
                f"{api.base_url}/v1/inbox/acc-7/stream",
                headers={"Authorization": f"Bearer {reader}"},
                timeout=10,
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("retry:"):
                        connected.set()
                    if line.startswith("data: "):
                        received.append(line)
                        return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert connected.wait(timeout=10)
        app.inbox.add(
            delivery_id=uuid.uuid4(),
            account_id="acc-7",
            agency_code="A",
            dossier_code="D-1",
            status="result_ready",
            title="Hồ sơ đã có kết quả",
            body="Mời nhận kết quả",
            link=None,
        )
        app.inbox.add(
            delivery_id=uuid.uuid4(),
            account_id="acc-8",
            agency_code="A",
            dossier_code="D-2",
            status="result_ready",
            title="someone else",
            body="-",
            link=None,
        )
        listener.join(timeout=10)
    assert len(received) == 1
    payload = json.loads(received[0].removeprefix("data: "))
    assert payload["title"] == "Hồ sơ đã có kết quả"
    assert payload["dossier_code"] == "D-1"


def test_cli_publishes_with_confirms_and_queries_the_log(
    app: Notifier, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    env = notifier_env(app.settings)
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(3)]
    lines = "\n".join(json.dumps(e, ensure_ascii=False) for e in events)
    runner = CliRunner()

    setup = runner.invoke(main, ["broker", "setup"], env=env)
    assert setup.exit_code == 0, setup.output
    with RunningWorker(app):
        published = runner.invoke(main, ["publish", "-"], input=lines, env=env)
        assert published.exit_code == 0, published.output
        assert "confirmed 3, failed 0" in published.output
        expected = sum(1 for e in events if e["dossier"]["status"] != "processing")
        wait_until(lambda: len(smtp.messages) == expected)

    dossier = events[0]["dossier"]["code"]
    listed = runner.invoke(main, ["deliveries", "--dossier", dossier, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert rows
    assert {row["dossier_code"] for row in rows} == {dossier}
    assert all("@" not in row["recipient"] or "***" in row["recipient"] for row in rows)

    table = runner.invoke(main, ["deliveries", "--channel", "email"], env=env)
    assert table.exit_code == 0
    assert table.output.splitlines()[0].split()[:3] == ["CREATED_AT", "DOSSIER_CODE", "CHANNEL"]


def test_publish_reports_events_nobody_receives(app: Notifier, smtp: SmtpCatcher) -> None:
    env = notifier_env(app.settings)
    env["NOTIFIER_EVENTS__EXCHANGE"] = "amq.topic"  # exists, but nothing is bound
    env["NOTIFIER_EVENTS__ROUTING_KEY"] = f"nobody.{uuid.uuid4().hex}"
    result = CliRunner().invoke(main, ["publish", "-"], input=json.dumps(sample_event(1)), env=env)
    assert result.exit_code == 1
    assert "confirmed 0, failed 1" in result.output


def test_the_demo_dates_its_sample_events_just_before_now(tmp_path: Path) -> None:
    # Fixed sample dates made the overview's "median time to send" read "7 ngày 4 h".
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    before = datetime.now(UTC)
    demo = ["demo", "--events", "10", "--exit", "--dir", str(tmp_path / "demo")]
    result = subprocess.run(
        [sys.executable, "-m", "notifier.cli.main", *demo],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    database = Database(f"sqlite:///{tmp_path / 'demo' / 'demo.db'}")
    try:
        with database.engine.connect() as connection:
            rows = connection.execute(
                sa.select(events.c.occurred_at, events.c.received_at).where(
                    events.c.status != "reply"  # the rows of the citizens' replies
                )
            ).all()
    finally:
        database.dispose()
    assert len(rows) == 10
    # The demo also shows citizens asking and getting an answer (SMS and Zalo).
    assert "Citizens ask, notifier answers" in result.stdout
    assert "reply by SMS:  'Ho so " in result.stdout
    assert "consultation reply: 'Tra cứu hồ sơ" in result.stdout
    for occurred_at, received_at in rows:
        assert before - timedelta(minutes=1) <= occurred_at <= received_at
        assert received_at - occurred_at < timedelta(minutes=1)


def test_the_demo_makes_a_console_account_and_prints_its_sign_in_once(
    sqlite_database: Database,
) -> None:
    app = Notifier(make_settings(database_url=sqlite_database.url, broker_url="memory://"))
    try:
        with capture_logs("DEBUG") as logs:
            serving = prepare_serving(app, 8765)
    finally:
        app.close()
    text = "\n".join(serving.instructions)
    assert "Operators' console: http://127.0.0.1:8765/console/" in text
    match = re.search(r"sign in as 'demo' with the password (\S+)", text)
    assert match is not None, text
    password = match.group(1)
    assert text.count(password) == 1
    operator = OperatorStore(sqlite_database).authenticate("demo", password)
    assert operator is not None
    assert operator.is_admin
    assert password not in logs.text


def test_publish_of_a_large_file_shows_a_progress_bar_on_a_terminal(
    app: Notifier, tmp_path: Path
) -> None:
    env = notifier_env(app.settings, NOTIFIER_LOG_LEVEL="WARNING")
    assert CliRunner().invoke(main, ["broker", "setup"], env=env).exit_code == 0
    file = tmp_path / "events.jsonl"
    file.write_text(
        "".join(
            json.dumps(sample_event(i, event_id=uuid.uuid4()), ensure_ascii=False) + "\n"
            for i in range(300)
        ),
        encoding="utf-8",
    )
    output = run_on_terminal(["publish", str(file)], env)
    assert re.search(r"publishing\s+\[#+\]\s+300/300", output), output
    assert output.splitlines()[-1].strip() == "confirmed 300, failed 0"


def test_publish_with_json_or_piped_prints_only_a_parseable_summary(
    app: Notifier, tmp_path: Path
) -> None:
    env = notifier_env(app.settings, NOTIFIER_LOG_LEVEL="WARNING")
    assert CliRunner().invoke(main, ["broker", "setup"], env=env).exit_code == 0
    file = tmp_path / "events.jsonl"
    file.write_text(
        "".join(json.dumps(sample_event(i, event_id=uuid.uuid4())) + "\n" for i in range(5)),
        encoding="utf-8",
    )
    piped = subprocess.run(
        [sys.executable, "-m", "notifier.cli.main", "publish", str(file)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "publishing" not in piped.stdout + piped.stderr
    assert piped.stdout == "confirmed 5, failed 0\n"
    as_json = run_on_terminal(["publish", "--json", str(file)], env)  # even on a terminal
    assert "publishing" not in as_json
    assert json.loads(as_json.splitlines()[-1]) == {"confirmed": 5, "failed": []}


def test_adapters_lists_settings_without_secret_values() -> None:
    env = {**os.environ, "NOTIFIER_ADAPTERS__EMAIL__PASSWORD": "s3cret-smtp-pass"}
    result = CliRunner().invoke(main, ["adapters", "--json"], env=env)
    assert result.exit_code == 0, result.output
    described = {item["name"]: item for item in json.loads(result.output)}
    assert {"email", "portal"} <= set(described)
    password = next(s for s in described["email"]["settings"] if s["name"] == "password")
    assert password["secret"] is True
    assert "s3cret-smtp-pass" not in result.output


def test_demo_delivers_every_event_on_the_embedded_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "notifier.cli.main",
            "demo",
            "--events",
            "20",
            "--exit",
            "--dir",
            str(tmp_path / "demo"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "emails caught by the SMTP catcher" in result.stdout
    assert "permanent-failure" not in result.stdout
