"""`notifier callbacks`: set (the secret printed once), refuse a URL the rules refuse, rotate
and end a rotation, list health, list and replay dead letters, remove."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner

from notifier.cli.main import main
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.callbacks import CallbackStore, IncomingStatus
from notifier.store.publishers import BrokerPublishers
from tests.support import REPO

KEY = "k" * 40


def _env(database: Database) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        NOTIFIER_DATABASE_URL=database.url,
        NOTIFIER_CONFIG_DIR=str(REPO / "config"),
        NOTIFIER_SECRET_KEY=KEY,
    )
    return env


def test_an_operator_sets_rotates_lists_replays_and_removes_a_callback(
    sqlite_database: Database,
) -> None:
    ApiKeys(sqlite_database).create("mot-cua", ["publish"], ["H29"])
    BrokerPublishers(sqlite_database).set("igate", ["*"])
    env, run = _env(sqlite_database), CliRunner().invoke

    refused = run(main, ["callbacks", "set", "mot-cua", "--url", "http://x.example.vn"], env=env)
    assert refused.exit_code == 1
    assert "must be https" in refused.output
    unknown = run(main, ["callbacks", "set", "nobody", "--url", "https://x.example.vn"], env=env)
    assert unknown.exit_code == 1
    assert "no api-key named 'nobody'" in unknown.output

    made = run(main, ["callbacks", "set", "mot-cua", "--url", "https://m.example.vn/h"], env=env)
    assert made.exit_code == 0, made.output
    secret = made.stdout.splitlines()[1]
    assert secret.startswith("whsec_")
    again = run(main, ["callbacks", "set", "mot-cua", "--url", "https://m2.example.vn/h"], env=env)
    assert "whsec_" not in again.output  # the secret is shown once, when made
    user = ["callbacks", "set", "igate", "--broker-user", "--url", "https://i.example.vn/h"]
    assert run(main, user, env=env).exit_code == 0

    rotated = run(main, ["callbacks", "rotate-secret", "mot-cua"], env=env)
    assert rotated.exit_code == 0
    assert rotated.stdout.strip().startswith("whsec_")
    assert rotated.stdout.strip() != secret
    store = CallbackStore(sqlite_database, KEY)
    target = store.target("api-key", "mot-cua")
    assert target is not None
    assert target.secrets_in_use == 2
    assert run(main, ["callbacks", "end-rotation", "mot-cua"], env=env).exit_code == 0
    target = store.target("api-key", "mot-cua")
    assert target is not None
    assert target.secrets_in_use == 1

    now = datetime.now(UTC)
    body = '{"schema": "notifier.status.v1", "id": "st-1"}'
    store.record([IncomingStatus("st-1", "delivery.failed", "H29", 1, body)], now)
    for claim in store.claim_due(now, 10, timedelta(minutes=1)):
        store.failed(claim, now, "the receiver answered HTTP 500", 500, None)

    listed = json.loads(run(main, ["callbacks", "list", "--json"], env=env).stdout)
    assert {(h["publisher"], h["kind"], h["dead_letters"]) for h in listed} == {
        ("mot-cua", "api-key", 1),
        ("igate", "broker-user", 1),
    }
    assert all("whsec_" not in json.dumps(h) for h in listed)
    letters = json.loads(
        run(main, ["callbacks", "dead-letters", "--publisher", "igate", "--json"], env=env).stdout
    )
    assert letters["total"] == 1
    (letter,) = letters["items"]
    replayed = run(main, ["callbacks", "replay", letter["callback_id"]], env=env)
    assert "replayed 1 callback(s)" in replayed.output
    everything = run(main, ["callbacks", "replay", "--all"], env=env)
    assert "replayed 1 callback(s)" in everything.output
    assert store.dead_count() == 0
    assert run(main, ["callbacks", "replay"], env=env).exit_code == 1

    assert run(main, ["callbacks", "remove", "mot-cua"], env=env).exit_code == 0
    assert [t.publisher_name for t in store.targets()] == ["igate"]
    assert run(main, ["callbacks", "remove", "mot-cua"], env=env).exit_code == 1
