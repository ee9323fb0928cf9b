"""The storage layer on both paths: every test here runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from notifier.events import parse_event
from notifier.ops.samples import sample_event
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.deliveries.lifecycle import (
    AttemptRecord,
    ClaimedDelivery,
    ClaimOutcome,
    DeliveryStatus,
    DeliveryStore,
    PlannedDelivery,
)
from notifier.store.deliveries.log import DeliveryLog, DeliveryQuery
from notifier.store.inbox import InboxStore, NewNotification
from notifier.store.schema import deliveries, delivery_attempts, events
from notifier.store.tokens import TokenGrant, TokenStore, TokenStoreError


def record_event(database: Database, channels: list[str]) -> tuple[object, list[uuid.UUID]]:
    event = parse_event(json.dumps(sample_event(3, event_id=uuid.uuid4())), max_bytes=65536)
    planned = [
        PlannedDelivery(
            delivery_id=uuid.uuid4(),
            channel=channel,
            recipient=f"r-{channel}",
            recipient_masked="r***",
            recipient_hash=f"h-{channel}",
            language="vi",
            template=f"vi/{channel}/received",
            content={"text": "xin chào"},
        )
        for channel in channels
    ]
    with database.begin() as connection:
        connection.execute(
            events.insert().values(
                event_id=event.event_id,
                received_at=datetime.now(UTC),
                occurred_at=event.occurred_at,
                source_system="t",
                agency_code=event.agency.code,
                dossier_code=event.dossier.code,
                procedure_code="p",
                status="received",
                payload={},
            )
        )
        DeliveryStore(database).insert_planned(connection, [(event, planned)])
    return event, [p.delivery_id for p in planned]


def claim_one(
    store: DeliveryStore, delivery_id: uuid.UUID
) -> tuple[ClaimOutcome, ClaimedDelivery | None]:
    claims = store.claim([delivery_id], timedelta(seconds=60))
    if claims.claimed:
        return ClaimOutcome.CLAIMED, claims.claimed[0]
    return claims.not_claimed[delivery_id], None


def test_a_delivery_is_claimed_once_until_its_lease_expires(database: Database) -> None:
    store = DeliveryStore(database)
    _event, [delivery_id] = record_event(database, ["email"])

    outcome, claimed = claim_one(store, delivery_id)
    assert outcome is ClaimOutcome.CLAIMED
    assert claimed is not None
    assert claimed.attempt == 1
    assert claim_one(store, delivery_id)[0] is ClaimOutcome.BUSY

    # A worker that died mid-send leaves its lease; once it expires the send is retried.
    with database.begin() as connection:
        connection.execute(
            sa.text("UPDATE deliveries SET lease_until = :past"),
            {"past": datetime.now(UTC) - timedelta(1)},
        )
    outcome, again = claim_one(store, delivery_id)
    assert outcome is ClaimOutcome.CLAIMED
    assert again is not None
    assert again.attempt == 2

    store.finish_attempts(
        [
            AttemptRecord(
                again,
                DeliveryStatus.SENT,
                "email",
                datetime.now(UTC),
                provider_message_id="m-1",
            )
        ]
    )
    assert claim_one(store, delivery_id)[0] is ClaimOutcome.FINISHED
    assert claim_one(store, uuid.uuid4())[0] is ClaimOutcome.MISSING
    with database.engine.connect() as connection:
        attempts = connection.execute(sa.select(delivery_attempts.c.outcome)).scalars().all()
    assert attempts == ["sent"]


def test_a_group_claim_takes_only_what_is_free_and_says_why_not(database: Database) -> None:
    store = DeliveryStore(database)
    _event, [free, held, done] = record_event(database, ["email", "sms", "zalo"])
    [held_claim] = store.claim([held], timedelta(seconds=60)).claimed
    [done_claim] = store.claim([done], timedelta(seconds=60)).claimed
    store.finish_attempts([AttemptRecord(done_claim, DeliveryStatus.SENT, "gw", datetime.now(UTC))])
    missing = uuid.uuid4()

    claims = store.claim([free, held, done, missing, free], timedelta(seconds=60))

    assert [c.delivery_id for c in claims.claimed] == [free]
    assert claims.not_claimed == {
        held: ClaimOutcome.BUSY,
        done: ClaimOutcome.FINISHED,
        missing: ClaimOutcome.MISSING,
    }
    assert held_claim.attempt == 1


def test_recording_a_group_sets_each_deliverys_own_outcome(database: Database) -> None:
    store = DeliveryStore(database)
    _event, ids = record_event(database, ["email", "sms", "zalo", "portal"])
    claims = store.claim(ids, timedelta(seconds=60)).claimed
    by_channel = {c.channel: c for c in claims}
    now = datetime.now(UTC)
    store.finish_attempts(
        [
            AttemptRecord(
                by_channel["email"], DeliveryStatus.SENT, "smtp", now, provider_message_id="e-1"
            ),
            AttemptRecord(
                by_channel["sms"],
                DeliveryStatus.TEMPORARY_FAILURE,
                "esms",
                now,
                error="busy",
                error_code="99",
                counted=False,
            ),
            AttemptRecord(
                by_channel["zalo"], DeliveryStatus.PERMANENT_FAILURE, "zalo", now, error="no user"
            ),
            AttemptRecord(
                by_channel["portal"],
                DeliveryStatus.DELIVERED,
                "portal",
                now,
                details={"inbox_id": 7},
            ),
        ]
    )
    d = deliveries.c
    with database.engine.connect() as connection:
        rows = {
            row.channel: row
            for row in connection.execute(
                sa.select(
                    d.channel,
                    d.status,
                    d.attempts,
                    d.provider,
                    d.provider_message_id,
                    d.last_error,
                    d.details,
                    d.sent_at,
                    d.delivered_at,
                    d.lease_until,
                )
            )
        }
        attempts = connection.execute(
            sa.select(delivery_attempts.c.outcome, delivery_attempts.c.error_code)
        ).all()
    assert (rows["email"].status, rows["email"].provider_message_id) == ("sent", "e-1")
    assert rows["email"].sent_at is not None
    assert rows["email"].delivered_at is None
    assert (rows["sms"].status, rows["sms"].attempts, rows["sms"].last_error) == (
        "temporary-failure",
        0,  # not counted: the provider named its own time
        "busy",
    )
    assert (rows["zalo"].status, rows["zalo"].last_error) == ("permanent-failure", "no user")
    assert rows["zalo"].sent_at is None
    assert (rows["portal"].status, rows["portal"].details) == ("delivered", {"inbox_id": 7})
    assert rows["portal"].delivered_at is not None
    assert all(row.lease_until is None for row in rows.values())
    assert sorted(attempts, key=str) == sorted(
        [
            ("sent", None),
            ("temporary-failure", "99"),
            ("permanent-failure", None),
            ("delivered", None),
        ],
        key=str,
    )


def test_concurrent_claims_let_exactly_one_worker_send(database: Database) -> None:
    store = DeliveryStore(database)
    _event, [delivery_id] = record_event(database, ["sms"])
    results: list[ClaimOutcome] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(claim_one(store, delivery_id)[0])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(ClaimOutcome.CLAIMED) == 1
    assert results.count(ClaimOutcome.BUSY) == 7


def test_receipts_move_sent_deliveries_forward_only(database: Database) -> None:
    store = DeliveryStore(database)
    _event, [sent_id, failed_id] = record_event(database, ["sms", "zalo"])
    for claimed in store.claim([sent_id, failed_id], timedelta(seconds=60)).claimed:
        store.finish_attempts(
            [
                AttemptRecord(
                    claimed,
                    DeliveryStatus.SENT,
                    "gw",
                    datetime.now(UTC),
                    provider_message_id=f"p-{claimed.delivery_id}",
                )
            ]
        )

    assert store.apply_receipt(
        "gw",
        channels={"sms", "zalo"},
        delivered=True,
        delivery_id=None,
        provider_message_id=f"p-{sent_id}",
        error=None,
        error_code=None,
    )
    assert store.apply_receipt(
        "gw",
        channels={"sms", "zalo"},
        delivered=False,
        delivery_id=failed_id,
        provider_message_id=None,
        error="phone off",
        error_code="4",
    )
    assert not store.apply_receipt(
        "gw",
        channels={"sms", "zalo"},
        delivered=True,
        delivery_id=None,
        provider_message_id="unknown",
        error=None,
        error_code=None,
    )
    # A late "failed" receipt cannot undo a delivered one.
    store.apply_receipt(
        "gw",
        channels={"sms", "zalo"},
        delivered=False,
        delivery_id=sent_id,
        provider_message_id=None,
        error="late",
        error_code=None,
    )
    with database.engine.connect() as connection:
        rows = connection.execute(sa.select(deliveries.c.delivery_id, deliveries.c.status))
        by_id = {row.delivery_id: row.status for row in rows}
    assert by_id[sent_id] == "delivered"
    assert by_id[failed_id] == "permanent-failure"


def _send_each(store: DeliveryStore, sent_by: dict[uuid.UUID, tuple[str, str | None]]) -> None:
    """Record each delivery as sent by (provider, provider message id)."""
    claims = store.claim(list(sent_by), timedelta(seconds=60)).claimed
    store.finish_attempts(
        [
            AttemptRecord(
                c,
                DeliveryStatus.SENT,
                sent_by[c.delivery_id][0],
                datetime.now(UTC),
                provider_message_id=sent_by[c.delivery_id][1],
            )
            for c in claims
        ]
    )


def _statuses(database: Database) -> dict[uuid.UUID, str]:
    with database.engine.connect() as connection:
        rows = connection.execute(sa.select(deliveries.c.delivery_id, deliveries.c.status))
        return {row.delivery_id: row.status for row in rows}


def _receipt_rows(database: Database) -> int:
    with database.engine.connect() as connection:
        return len(
            connection.execute(
                sa.select(delivery_attempts.c.outcome).where(
                    delivery_attempts.c.outcome.like("receipt:%")
                )
            ).all()
        )


def test_a_receipt_naming_another_providers_delivery_is_not_applied(database: Database) -> None:
    store = DeliveryStore(database)
    _event, [email_id, zalo_id, sms_id] = record_event(database, ["email", "zalo", "sms"])
    _send_each(
        store,
        {
            email_id: ("email", None),
            zalo_id: ("zalo", "zalo-msg-1"),
            sms_id: ("esms", "esms-smsid-1"),
        },
    )

    def esms_says(delivery_id: uuid.UUID, sms_id: str | None, *, delivered: bool) -> bool:
        return store.apply_receipt(
            "esms",
            channels={"sms"},
            delivered=delivered,
            delivery_id=delivery_id,
            provider_message_id=sms_id,
            error=None,
            error_code=None,
        )

    # eSMS (or whoever holds its callback token) names the email and the Zalo message.
    assert not esms_says(email_id, None, delivered=False)
    assert not esms_says(zalo_id, "zalo-msg-1", delivered=True)
    # A correctly signed Zalo webhook names the email delivery.
    assert not store.apply_receipt(
        "zalo",
        channels={"zalo"},
        delivered=True,
        delivery_id=email_id,
        provider_message_id="zalo-msg-9",
        error=None,
        error_code=None,
    )
    # Another gateway of the same channel, or eSMS with another message's SMSID.
    assert not store.apply_receipt(
        "speedsms",
        channels={"sms"},
        delivered=True,
        delivery_id=None,
        provider_message_id="esms-smsid-1",
        error=None,
        error_code=None,
    )
    assert not esms_says(sms_id, "esms-smsid-2", delivered=False)
    assert _statuses(database) == {email_id: "sent", zalo_id: "sent", sms_id: "sent"}
    assert _receipt_rows(database) == 0

    # Its own delivery, by our reference and its id: applied once, recorded once.
    assert esms_says(sms_id, "esms-smsid-1", delivered=True)
    assert not esms_says(sms_id, "esms-smsid-1", delivered=True)
    assert not esms_says(sms_id, None, delivered=False)
    assert _statuses(database)[sms_id] == "delivered"
    assert _receipt_rows(database) == 1


def test_inbox_stores_a_group_at_once_keeping_earlier_notifications(database: Database) -> None:
    inbox = InboxStore(database)

    def notification(delivery_id: uuid.UUID, title: str) -> NewNotification:
        return NewNotification(delivery_id, "acc-9", "A", "D", "received", title, "b", None)

    earlier = uuid.uuid4()
    earlier_id = inbox.add_many([notification(earlier, "first")])[earlier]
    group = [uuid.uuid4() for _ in range(3)]
    ids = inbox.add_many([notification(earlier, "again"), *(notification(g, "new") for g in group)])
    assert set(ids) == {earlier, *group}
    assert ids[earlier] == earlier_id
    assert len(set(ids.values())) == 4
    titles = sorted(item.title for item in inbox.list("acc-9"))
    assert titles == ["first", "new", "new", "new"]


def test_inbox_pages_newest_first_and_marks_read_per_account(database: Database) -> None:
    inbox = InboxStore(database)
    ids = [
        inbox.add(
            delivery_id=uuid.uuid4(),
            account_id="acc-1",
            agency_code="A",
            dossier_code=f"D-{n}",
            status="received",
            title=f"Tiêu đề {n}",
            body="Nội dung",
            link=None,
        )
        for n in range(5)
    ]
    repeated = uuid.uuid4()
    first = inbox.add(
        delivery_id=repeated,
        account_id="acc-2",
        agency_code="A",
        dossier_code="X",
        status="received",
        title="t",
        body="b",
        link=None,
    )
    assert (
        inbox.add(
            delivery_id=repeated,
            account_id="acc-2",
            agency_code="A",
            dossier_code="X",
            status="received",
            title="t",
            body="b",
            link=None,
        )
        == first
    )

    page1 = inbox.list("acc-1", limit=2)
    page2 = inbox.list("acc-1", limit=2, before_id=page1[-1].id)
    assert [i.id for i in page1] == ids[::-1][:2]
    assert [i.id for i in page2] == ids[::-1][2:4]
    assert page1[0].title == "Tiêu đề 4"
    assert inbox.unread_count("acc-1") == 5
    assert inbox.mark_read("acc-1", ids[0]) == 1
    assert inbox.mark_read("acc-2", ids[1]) == 0  # another citizen's item is untouched
    assert inbox.unread_count("acc-1") == 4
    assert inbox.mark_read("acc-1") == 4
    assert inbox.unread_count("acc-1") == 0
    assert inbox.unread_count("acc-2") == 1


def test_api_keys_are_stored_hashed_scoped_and_revocable(database: Database) -> None:
    keys = ApiKeys(database)
    key = keys.create("motcua-hanoi", ["publish"], ["000.00.12.H29"])
    with database.engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT key_hash FROM api_clients")).scalar_one()
    assert key not in stored
    client = keys.authenticate(key)
    assert client is not None
    assert client.scopes == ("publish",)
    assert client.may_publish_for("000.00.12.H29")
    assert not client.may_publish_for("000.00.20.H56")
    assert keys.authenticate(key + "x") is None
    assert keys.revoke("motcua-hanoi")
    assert keys.authenticate(key) is None
    with pytest.raises(ValueError, match="scopes"):
        keys.create("bad", ["root"], [])


def test_tokens_are_encrypted_and_refreshed_once_under_concurrency(database: Database) -> None:
    store = TokenStore(database, "k" * 32)
    store.put("zalo", refresh_token="refresh-0")
    with database.engine.connect() as connection:
        raw = connection.execute(sa.text("SELECT refresh_token FROM provider_tokens")).scalar_one()
    assert "refresh-0" not in raw

    calls: list[str] = []
    seen = store.get("zalo")
    assert seen is not None

    def refresher(current: object) -> TokenGrant:
        calls.append("refresh")
        time.sleep(0.2)  # hold the lock while others wait
        return TokenGrant("access-1", "refresh-1", datetime.now(UTC) + timedelta(hours=25))

    results = []
    barrier = threading.Barrier(4)

    def refresh() -> None:
        barrier.wait()
        results.append(store.refresh("zalo", refresher, seen_version=seen.version))

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["refresh"]
    assert {r.refresh_token for r in results} == {"refresh-1"}
    stored = store.get("zalo")
    assert stored is not None
    assert stored.access_token == "access-1"
    assert not stored.expires_within(3600)

    with pytest.raises(TokenStoreError, match="NOTIFIER_SECRET_KEY"):
        TokenStore(database, "another-key-entirely").get("zalo")


def test_a_receipt_nonce_is_new_once(database: Database) -> None:
    store = DeliveryStore(database)
    assert store.take_nonces("zalo", ["mac-1", "mac-2"]) == [True, True]
    assert store.take_nonces("zalo", ["mac-1", "mac-3"]) == [False, True]
    assert store.take_nonces("esms", ["mac-1"]) == [True]  # per provider


def test_a_failure_that_used_up_its_retries_is_a_dead_letter_whatever_its_text_says(
    database: Database,
) -> None:
    """The ``exhausted`` column, not the wording of the error, tells a dead letter from
    a message the provider refused: each finish path (SQLite row by row, PostgreSQL from
    arrays) writes it, and the log's dead-letter search reads it."""
    store = DeliveryStore(database)
    _event, ids = record_event(database, ["email", "sms", "zalo"])
    by_channel = {c.channel: c for c in store.claim(ids, timedelta(seconds=60)).claimed}
    now = datetime.now(UTC)
    store.finish_attempts(
        [
            AttemptRecord(
                by_channel["email"],
                DeliveryStatus.PERMANENT_FAILURE,
                "smtp",
                now,
                error="451 mail server busy",
                exhausted=True,
            ),
            # Refused outright, with an error that merely reads like the old prefix.
            AttemptRecord(
                by_channel["sms"],
                DeliveryStatus.PERMANENT_FAILURE,
                "esms",
                now,
                error="gave up after checking: number barred",
            ),
            AttemptRecord(by_channel["zalo"], DeliveryStatus.SENT, "zalo", now),
        ]
    )
    d = deliveries.c
    with database.engine.connect() as connection:
        found = connection.execute(sa.select(d.channel, d.exhausted))
        exhausted = {row.channel: row.exhausted for row in found}
    assert exhausted == {"email": True, "sms": False, "zalo": False}

    log = DeliveryLog(database, "key")
    dead = DeliveryQuery(status=DeliveryStatus.PERMANENT_FAILURE.value, gave_up=True)
    refused = DeliveryQuery(status=DeliveryStatus.PERMANENT_FAILURE.value, gave_up=False)
    assert [row.channel for row in log.search(dead)] == ["email"]
    assert [row.channel for row in log.search(refused)] == ["sms"]
    assert (log.count(dead), log.count(refused)) == (1, 1)


def test_a_provider_reporting_a_sent_message_undelivered_is_not_a_dead_letter(
    database: Database,
) -> None:
    store = DeliveryStore(database)
    _event, [delivery_id] = record_event(database, ["sms"])
    [claimed] = store.claim([delivery_id], timedelta(seconds=60)).claimed
    store.finish_attempts([AttemptRecord(claimed, DeliveryStatus.SENT, "esms", datetime.now(UTC))])
    changed = store.apply_receipt(
        "esms",
        channels={"sms"},
        delivered=False,
        delivery_id=delivery_id,
        provider_message_id=None,
        error="handset off",
        error_code="5",
    )
    assert changed
    d = deliveries.c
    with database.engine.connect() as connection:
        row = connection.execute(
            sa.select(d.status, d.exhausted).where(d.delivery_id == delivery_id)
        ).one()
    assert (row.status, row.exhausted) == (DeliveryStatus.PERMANENT_FAILURE.value, False)
