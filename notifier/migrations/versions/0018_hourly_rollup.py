"""hourly rollup of the delivery log, its dirty marks, and an index on events.received_at

Reports, the console overview and the budget read whole settled hours from the rollup
tables instead of grouping the raw rows (issue 21, item 6; see
notifier.store.deliveries.rollups). On PostgreSQL, triggers write a ``rollup_dirty``
mark (the row's UTC hour) in the same transaction as any insert, delete or counted
change of a delivery or event older than 10 minutes (rollups.MARK_AFTER), so readers
read that hour raw until a refresh recomputes it. The existing rows are rolled up here
(a province upgrading keeps its fast reports); SQLite (the embedded demo) gets the
tables but no triggers and no backfill: it reads the raw rows.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = "0018"
# The counters helper adds 0016; the lead re-chains at merge.
down_revision = "0017"
branch_labels = None
depends_on = None

_UTC = notifier.store.schema.UTCDateTime(timezone=True)
# A change is marked when the row is older than this (rollups.MARK_AFTER): the write
# path's own rows (created moments ago) never pay for a mark.
_MARGIN = "interval '10 minutes'"
# What the rollup counts of a delivery: a change to any of these marks its hour.
_COUNTED = (
    "created_at",
    "event_id",
    "agency_code",
    "procedure_code",
    "channel",
    "status",
    "provider",
    "exhausted",
    "cost_vnd",
    "cost_source",
    "segments",
    "sent_at",
    "hold_reason",
    "suppressed_reason",
)


def _mark_function(name: str, column: str) -> str:
    # Built from this module's constants only.
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO rollup_dirty (hour) VALUES (date_trunc('hour', OLD.{column}, 'UTC'));
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO rollup_dirty (hour) VALUES (date_trunc('hour', NEW.{column}, 'UTC'));
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.{column} IS DISTINCT FROM OLD.{column} THEN
            INSERT INTO rollup_dirty (hour) VALUES (date_trunc('hour', NEW.{column}, 'UTC'));
        END IF;
    END IF;
    RETURN NULL;
END
$$"""  # noqa: S608


def _triggers(table: str, column: str, counted: tuple[str, ...], function: str) -> list[str]:
    old = f"OLD.{column} < now() - {_MARGIN}"
    new = f"NEW.{column} < now() - {_MARGIN}"
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in counted)
    return [
        f"CREATE TRIGGER {table}_rollup_insert AFTER INSERT ON {table} FOR EACH ROW "
        f"WHEN ({new}) EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_rollup_delete AFTER DELETE ON {table} FOR EACH ROW "
        f"WHEN ({old}) EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_rollup_update AFTER UPDATE OF {', '.join(counted)} "
        f"ON {table} FOR EACH ROW WHEN (({old} OR {new}) AND ({changed})) "
        f"EXECUTE FUNCTION {function}()",
    ]


def upgrade() -> None:
    # (events.received_at, which the rollup counts by, was indexed by 0017.)
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("rolled_until", _UTC, nullable=True),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rollup_state")),
    )
    op.create_table(
        "rollup_dirty",
        sa.Column(
            "mark_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("hour", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("mark_id", name=op.f("pk_rollup_dirty")),
    )
    op.create_index("ix_rollup_dirty_hour", "rollup_dirty", ["hour"])
    op.create_table(
        "delivery_hours",
        sa.Column("hour", _UTC, nullable=False),
        sa.Column("agency_code", sa.String(length=64), nullable=False),
        sa.Column("procedure_code", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("exhausted", sa.Integer(), nullable=False),
        sa.Column("charged", sa.Integer(), nullable=False),
        sa.Column("cost_vnd", sa.Numeric(18, 2), nullable=False),
        sa.Column("reported_vnd", sa.Numeric(18, 2), nullable=False),
        sa.Column("segmented", sa.Integer(), nullable=False),
        sa.Column("segments", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour",
            "agency_code",
            "procedure_code",
            "channel",
            "status",
            "provider",
            name=op.f("pk_delivery_hours"),
        ),
    )
    op.create_table(
        "delivery_reason_hours",
        sa.Column("hour", _UTC, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("suppressed_reason", sa.String(length=32), nullable=False),
        sa.Column("hold_reason", sa.String(length=32), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour",
            "channel",
            "status",
            "suppressed_reason",
            "hold_reason",
            name=op.f("pk_delivery_reason_hours"),
        ),
    )
    op.create_table(
        "delivery_latency_hours",
        sa.Column("hour", _UTC, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "channel", "bucket", name=op.f("pk_delivery_latency_hours")
        ),
    )
    op.create_table(
        "event_hours",
        sa.Column("hour", _UTC, nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hour", name=op.f("pk_event_hours")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_mark_function("notifier_rollup_mark_delivery", "created_at"))
    op.execute(_mark_function("notifier_rollup_mark_event", "received_at"))
    for statement in [
        *_triggers("deliveries", "created_at", _COUNTED, "notifier_rollup_mark_delivery"),
        *_triggers(
            "events", "received_at", ("received_at", "status"), "notifier_rollup_mark_event"
        ),
    ]:
        op.execute(statement)
    # The backfill, with this release's rollup code: a later change to these tables
    # ships its own migration, which rebuilds them the same way.
    from notifier.store.deliveries.rollups import rebuild_on

    rebuild_on(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("deliveries", "events"):
            for kind in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_rollup_{kind} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS notifier_rollup_mark_delivery()")
        op.execute("DROP FUNCTION IF EXISTS notifier_rollup_mark_event()")
    for table in (
        "event_hours",
        "delivery_latency_hours",
        "delivery_reason_hours",
        "delivery_hours",
    ):
        op.drop_table(table)
    op.drop_index("ix_rollup_dirty_hour", table_name="rollup_dirty")
    op.drop_table("rollup_dirty")
    op.drop_table("rollup_state")
