"""Schema migrations that move data: run on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from notifier.store import Database, schema
from notifier.store.migrate import upgrade

# Rows as the sender wrote them before 0008: (status, last_error).
_BEFORE_0008 = {
    "dead": ("permanent-failure", "gave up after 8 attempts: 451 mail server busy"),
    "refused": ("permanent-failure", "invalid recipient"),
    "receipt": ("permanent-failure", "provider reported not delivered: handset off"),
    # Replayed: queued again, its old text kept until the next attempt.
    "replayed": ("queued", "gave up after 8 attempts: 451 mail server busy"),
    "retrying": ("temporary-failure", "gateway busy"),
    "sent": ("sent", None),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with no schema yet (the session's databases are migrated to head)."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path}/migrations.db")
        yield database
        database.dispose()
        return
    database = Database(request.getfixturevalue("empty_pg_url"))
    yield database
    database.dispose()


def test_0008_marks_as_exhausted_exactly_the_failures_that_gave_up_after_retries(
    empty_database: Database,
) -> None:
    upgrade(empty_database, "0007")
    now = datetime.now(UTC)
    event_id = uuid.uuid4()
    ids = {name: uuid.uuid4() for name in _BEFORE_0008}
    # Tables of the columns that existed at 0007, typed as the application types them:
    # the application's own tables already have the new column.
    event_columns = (
        "event_id", "received_at", "occurred_at", "source_system", "agency_code",
        "dossier_code", "procedure_code", "status",
    )  # fmt: skip
    events = sa.table("events", *(sa.column(c, schema.events.c[c].type) for c in event_columns))
    columns = (
        "delivery_id", "event_id", "dossier_code", "agency_code", "procedure_code",
        "event_status", "channel", "language", "template", "recipient_masked",
        "recipient_hash", "status", "attempts", "last_error", "created_at", "updated_at",
    )  # fmt: skip
    deliveries = sa.table(
        "deliveries", *(sa.column(c, schema.deliveries.c[c].type) for c in columns)
    )
    with empty_database.begin() as connection:
        connection.execute(
            events.insert().values(
                event_id=event_id,
                received_at=now,
                occurred_at=now,
                source_system="t",
                agency_code="A",
                dossier_code="D",
                procedure_code="p",
                status="received",
            )
        )
        for name, (status, last_error) in _BEFORE_0008.items():
            connection.execute(
                deliveries.insert().values(
                    delivery_id=ids[name],
                    event_id=event_id,
                    dossier_code="D",
                    agency_code="A",
                    procedure_code="p",
                    event_status="received",
                    channel="email",
                    language="vi",
                    template="vi/email/received",
                    recipient_masked="r***",
                    recipient_hash=f"h-{name}",
                    status=status,
                    attempts=8,
                    last_error=last_error,
                    created_at=now,
                    updated_at=now,
                )
            )

    upgrade(empty_database)

    by_id = {delivery_id: name for name, delivery_id in ids.items()}
    with empty_database.engine.connect() as connection:
        exhausted = {
            by_id[row.delivery_id]: row.exhausted
            for row in connection.execute(
                sa.select(
                    sa.column("delivery_id", sa.Uuid), sa.column("exhausted", sa.Boolean)
                ).select_from(sa.table("deliveries"))
            )
        }
    assert exhausted == {
        "dead": True,
        "refused": False,
        "receipt": False,
        "replayed": False,
        "retrying": False,
        "sent": False,
    }


def test_0016_starts_the_counters_from_the_log_and_counts_no_change_twice(
    empty_database: Database,
) -> None:
    from notifier.store.counters import DELIVERIES, RETRIES, SUPPRESSED, MetricCounters

    upgrade(empty_database, "0015")
    now = datetime.now(UTC)
    event_id = uuid.uuid4()
    # The outbox as it was at 0015 (no folded, no send_outcome).
    outbox_columns = ("change_id", "type", "agency_code", "occurred_at", "body")
    outbox = sa.table(
        "status_outbox", *(sa.column(c, schema.status_outbox.c[c].type) for c in outbox_columns)
    )
    with empty_database.begin() as connection:
        connection.execute(
            schema.events.insert().values(
                event_id=event_id,
                received_at=now,
                occurred_at=now,
                source_system="t",
                agency_code="A",
                dossier_code="D",
                procedure_code="p",
                status="received",
            )
        )
        for status, attempts, reason in (
            ("sent", 3, None),
            ("suppressed", 0, "opted_out"),
            ("queued", 0, None),
        ):
            connection.execute(
                schema.deliveries.insert().values(
                    delivery_id=uuid.uuid4(),
                    event_id=event_id,
                    dossier_code="D",
                    agency_code="A",
                    procedure_code="p",
                    event_status="received",
                    channel="email",
                    provider=None if status != "sent" else "smtp",
                    language="vi",
                    template="vi/email/received",
                    recipient_masked="r***",
                    recipient_hash=f"h-{status}",
                    status=status,
                    attempts=attempts,
                    suppressed_reason=reason,
                    created_at=now,
                    updated_at=now,
                    sent_at=now if status == "sent" else None,
                )
            )
        # The sent delivery's change, still waiting in the outbox at the upgrade.
        connection.execute(
            outbox.insert().values(
                change_id=uuid.uuid4(),
                type="delivery.sent",
                agency_code="A",
                occurred_at=now,
                body={"type": "delivery.sent", "delivery": {"status": "sent"}},
            )
        )

    upgrade(empty_database)

    counters = MetricCounters(empty_database)
    values = counters.read().values
    assert values[DELIVERIES] == {("email", "smtp", "sent"): 1, ("email", "none", "suppressed"): 1}
    assert values[RETRIES] == {("email",): 2}
    assert values[SUPPRESSED] == {("email", "opted_out"): 1}
    # The change already in the log's recount is not folded again.
    assert counters.pending() == 0
    assert counters.fold_all() == 0
