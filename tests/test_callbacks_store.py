"""The callbacks' store on SQLite and PostgreSQL: who gets a status, once per message and
publisher; claims that never overlap and come back after a crash; retries, dead letters,
replay; secrets encrypted at rest and rotated; each publisher's health."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.callbacks import CallbackError, CallbackStatus, CallbackStore, IncomingStatus
from notifier.store.publishers import BrokerPublishers
from notifier.store.schema import callback_deliveries, callback_targets
from notifier.webhooks import new_secret

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def _status(n: int, agency: str | None = "H29", sequence: int = 1) -> IncomingStatus:
    return IncomingStatus(
        id=f"status-{n}",
        type="delivery.delivered",
        agency=agency,
        sequence=sequence,
        body=f'{{"schema": "notifier.status.v1", "id": "status-{n}"}}',
    )


@pytest.fixture
def store(database: Database) -> CallbackStore:
    keys = ApiKeys(database)
    keys.create("mot-cua-h29", ["publish"], ["H29"])
    keys.create("mot-cua-h30", ["publish"], ["H30"])
    keys.create("reader-h29", ["operator"], ["H29"])  # may not publish: told nothing
    BrokerPublishers(database).set("igate", ["*"])
    found = CallbackStore(database, "k" * 40)
    for kind, name in (
        ("api-key", "mot-cua-h29"),
        ("api-key", "mot-cua-h30"),
        ("api-key", "reader-h29"),
        ("broker-user", "igate"),
    ):
        found.set_target(kind, name, f"https://{name}.example.vn/hooks", new_secret())
    return found


def _targets_of(store: CallbackStore, message_id: str) -> set[str]:
    c, t = callback_deliveries.c, callback_targets.c
    with store.database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(t.publisher_name)
            .join(callback_targets, t.target_id == c.target_id)
            .where(c.message_id == message_id)
        )
        return {row.publisher_name for row in rows}


def test_a_status_goes_to_the_publishers_whose_agencies_include_its_agency(
    store: CallbackStore,
) -> None:
    assert store.record([_status(1, "H29"), _status(2, "H30"), _status(3, None)], T0) == 5
    assert _targets_of(store, "status-1") == {"mot-cua-h29", "igate"}
    assert _targets_of(store, "status-2") == {"mot-cua-h30", "igate"}
    # No readable agency: only a publisher for every agency may see it.
    assert _targets_of(store, "status-3") == {"igate"}


def test_a_redelivered_status_message_adds_no_second_callback(store: CallbackStore) -> None:
    assert store.record([_status(1)], T0) == 2
    assert store.record([_status(1)], T0 + timedelta(seconds=5)) == 0
    assert store.record([_status(1), _status(2)], T0) == 2


def test_a_group_reads_the_targets_only_when_who_may_hear_has_changed(
    store: CallbackStore,
) -> None:
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    assert store.record([_status(1, "H29")], T0) == 2  # the first group reads them
    sa.event.listen(store.database.engine, "before_cursor_execute", seen)
    try:
        assert store.record([_status(2, "H30")], T0) == 2
        assert not any("api_clients" in statement for statement in statements)
        # A new publisher's target raises the audience's version in its transaction:
        # the very next group reads the targets again and tells it.
        ApiKeys(store.database).create("mot-cua-h31", ["publish"], ["H31"])
        store.set_target("api-key", "mot-cua-h31", "https://h31.example.vn/hooks", new_secret())
        statements.clear()
        assert store.record([_status(3, "H31")], T0) == 2
        assert any("api_clients" in statement for statement in statements)
    finally:
        sa.event.remove(store.database.engine, "before_cursor_execute", seen)
    assert _targets_of(store, "status-2") == {"mot-cua-h30", "igate"}
    assert _targets_of(store, "status-3") == {"mot-cua-h31", "igate"}


def test_a_revoked_key_or_a_publisher_given_other_agencies_is_heard_by_the_next_group(
    store: CallbackStore,
) -> None:
    assert store.record([_status(1, "H29")], T0) == 2  # what the store now keeps
    ApiKeys(store.database).revoke("mot-cua-h29")
    BrokerPublishers(store.database).set("igate", ["H30"])
    assert store.record([_status(2, "H29")], T0) == 0
    assert store.record([_status(3, "H30")], T0) == 2
    assert _targets_of(store, "status-3") == {"mot-cua-h30", "igate"}


def test_a_status_consumed_right_after_a_target_is_added_in_another_process_reaches_it(
    store: CallbackStore,
) -> None:
    """What the snapshot kept for 5 s got wrong (reverted in 4551ce1): the target is
    added through a second store, as by the console in another process."""
    assert store.record([_status(1, "H30")], T0) == 2
    console = CallbackStore(Database(store.database.url), "k" * 40)
    try:
        ApiKeys(console.database).create("mot-cua-h30-b", ["publish"], ["H30"])
        console.set_target("api-key", "mot-cua-h30-b", "https://b.example.vn/hooks", new_secret())
    finally:
        console.database.dispose()
    assert store.record([_status(2, "H30")], T0) == 3
    assert _targets_of(store, "status-2") == {"mot-cua-h30", "mot-cua-h30-b", "igate"}


def test_a_revoked_key_gets_no_more_callbacks(store: CallbackStore) -> None:
    ApiKeys(store.database).revoke("mot-cua-h29")
    store.record([_status(1, "H29")], T0)
    assert _targets_of(store, "status-1") == {"igate"}


def test_a_callback_needs_an_existing_publisher(store: CallbackStore) -> None:
    with pytest.raises(CallbackError, match="no api-key named"):
        store.set_target("api-key", "nobody", "https://x.example.vn", new_secret())
    with pytest.raises(CallbackError):
        store.set_target("service", "notifier", "https://x.example.vn", new_secret())


def test_claims_never_overlap_and_a_claim_is_due_again_after_its_lease(
    store: CallbackStore,
) -> None:
    store.record([_status(n) for n in range(5)], T0)  # 10 callbacks
    first = store.claim_due(T0, 6, LEASE)
    second = store.claim_due(T0, 6, LEASE)
    assert len(first) == 6
    assert len(second) == 4
    assert not {c.callback_id for c in first} & {c.callback_id for c in second}
    assert store.claim_due(T0 + LEASE - timedelta(seconds=1), 20, LEASE) == []
    # The sender died: nothing recorded, so every claim comes back, one try counted.
    again = store.claim_due(T0 + LEASE, 20, LEASE)
    assert len(again) == 10
    assert {c.attempts for c in again} == {2}


def test_concurrent_claims_split_the_due_callbacks_between_senders(
    store: CallbackStore,
) -> None:
    store.record([_status(n) for n in range(40)], T0)  # 80 callbacks
    results: list[list[uuid.UUID]] = []
    lock = threading.Lock()

    def claim() -> None:
        got = []
        while True:
            batch = store.claim_due(T0, 5, LEASE)
            if not batch:
                break
            got += [c.callback_id for c in batch]
        with lock:
            results.append(got)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for got in results for i in got]
    assert len(every) == 80
    assert len(set(every)) == 80


def test_a_failed_try_is_due_at_its_retry_time_and_dead_when_given_up(
    store: CallbackStore,
) -> None:
    store.record([_status(1, "H30")], T0)
    claims = {c.url: c for c in store.claim_due(T0, 10, LEASE)}
    retry = claims["https://mot-cua-h30.example.vn/hooks"]
    dead = claims["https://igate.example.vn/hooks"]
    store.failed(retry, T0, "HTTP 429", 429, T0 + timedelta(seconds=30))
    store.failed(dead, T0, "HTTP 500", 500, None)
    assert store.claim_due(T0 + timedelta(seconds=29), 10, LEASE) == []
    assert [c.callback_id for c in store.claim_due(T0 + timedelta(seconds=30), 10, LEASE)] == [
        retry.callback_id
    ]
    letters = store.dead_letters()
    assert [(d.callback_id, d.publisher_name, d.last_status_code) for d in letters] == [
        (dead.callback_id, "igate", 500)
    ]
    assert store.dead_count("igate") == 1
    assert store.dead_count("mot-cua-h30") == 0


def test_replay_makes_a_dead_letter_due_now_with_a_fresh_age(store: CallbackStore) -> None:
    store.record([_status(1, "H30")], T0)
    for claim in store.claim_due(T0, 10, LEASE):
        store.failed(claim, T0, "HTTP 500", 500, None)
    later = T0 + timedelta(days=5)
    assert store.replay(publisher="igate", now=later) == 1
    assert store.dead_count() == 1  # the other publisher's stays dead
    (claim,) = store.claim_due(later, 10, LEASE)
    assert claim.window_start == later
    assert claim.url.startswith("https://igate.")
    assert store.replay([], now=later) == 0
    assert store.replay(None, now=later) == 1


def test_secrets_are_encrypted_at_rest_and_a_rotation_signs_with_two(
    store: CallbackStore,
) -> None:
    secret = new_secret()
    BrokerPublishers(store.database).set("vpcp", ["H29"])
    target, created = store.set_target("broker-user", "vpcp", "https://v.example.vn/h", secret)
    assert created
    assert target.secrets_in_use == 1
    with store.database.engine.connect() as connection:
        stored = connection.execute(sa.select(callback_targets.c.secrets)).scalars().all()
    assert not any(secret.removeprefix("whsec_") in value for value in stored)

    _, created = store.set_target("broker-user", "vpcp", "https://v2.example.vn/h", new_secret())
    assert not created  # the URL changed; the secret did not
    newer = new_secret()
    store.rotate_secret("broker-user", "vpcp", newer)
    store.record([_status(1, "H29")], T0)
    (claim,) = [c for c in store.claim_due(T0, 10, LEASE) if c.url == "https://v2.example.vn/h"]
    assert claim.secrets == (newer, secret)
    store.end_rotation("broker-user", "vpcp")
    target_after = store.target("broker-user", "vpcp")
    assert target_after is not None
    assert target_after.secrets_in_use == 1
    with pytest.raises(CallbackError, match="cannot be decrypted"):
        CallbackStore(store.database, "another key " * 4).targets()


def test_health_shows_each_publishers_last_success_failures_backlog_and_dead_letters(
    store: CallbackStore,
) -> None:
    store.record([_status(1, "H29"), _status(2, "H29")], T0)
    claims = store.claim_due(T0, 10, LEASE)
    h29 = [c for c in claims if "h29" in c.url]
    store.delivered(h29[0], T0 + timedelta(seconds=1), 200)
    store.failed(h29[1], T0 + timedelta(seconds=2), "HTTP 503", 503, T0 + timedelta(minutes=1))
    for claim in claims:
        if "igate" in claim.url:
            store.failed(claim, T0 + timedelta(seconds=3), "HTTP 500", 500, None)
    health = {h.target.publisher_name: h for h in store.health()}
    mine = health["mot-cua-h29"]
    assert mine.last_success_at == T0 + timedelta(seconds=1)
    assert mine.last_failure_at == T0 + timedelta(seconds=2)
    assert (mine.consecutive_failures, mine.backlog, mine.dead_letters, mine.delivered) == (
        1,
        1,
        0,
        1,
    )
    assert mine.agencies == ("H29",)
    assert (health["igate"].dead_letters, health["igate"].backlog) == (2, 0)
    assert health["reader-h29"].agencies is None  # not a publisher: told nothing
    assert health["mot-cua-h30"].backlog == 0


def test_delivered_callbacks_are_pruned_after_their_keep_time(store: CallbackStore) -> None:
    store.record([_status(1)], T0)
    claims = store.claim_due(T0, 10, LEASE)
    store.delivered(claims[0], T0, 204)
    assert store.prune_delivered(T0, 100) == 0
    assert store.prune_delivered(T0 + timedelta(seconds=1), 100) == 1
    with store.database.engine.connect() as connection:
        left = connection.execute(sa.select(callback_deliveries.c.status)).scalars().all()
    assert left == [CallbackStatus.PENDING.value]


def test_a_callback_whose_publisher_lost_the_agency_before_sending_is_not_sent(
    store: CallbackStore,
) -> None:
    """The same authorisation at send time as at intake: a revoked key, or a broker
    user whose agencies changed, gets nothing more, and a replay meets the same check."""
    store.record([_status(1, "H29"), _status(2, "H30")], T0)
    ApiKeys(store.database).revoke("mot-cua-h29")
    BrokerPublishers(store.database).set("igate", ["H30"])
    claims = store.claim_due(T0, 10, LEASE)
    assert sorted((c.url, c.message_id) for c in claims) == [
        ("https://igate.example.vn/hooks", "status-2"),
        ("https://mot-cua-h30.example.vn/hooks", "status-2"),
    ]
    letters = store.dead_letters()
    assert sorted((d.publisher_name, d.message_id) for d in letters) == [
        ("igate", "status-1"),
        ("mot-cua-h29", "status-1"),
    ]
    assert all("may no longer receive" in (d.last_error or "") for d in letters)
    assert all(d.attempts == 0 for d in letters)
    assert store.replay(None, now=T0) == 2
    assert store.claim_due(T0, 10, LEASE) == []
    assert store.dead_count() == 2
