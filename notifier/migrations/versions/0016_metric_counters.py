"""metric counters: /metrics reads counters folded from the status outbox

``metric_counters`` holds monotonic counters (deliveries by final status, retries,
suppressions and holds by reason, rejected events, the publish -> accepted latency
histogram), raised by folding ``status_outbox`` rows (``folded``; ``send_outcome`` says
a row ends a send), so a scrape no longer groups the delivery log
(notifier.store.counters). The dead letters get a partial index of their own. Events
keep when they were published (``published_at``, from the publisher's header), where
the latency histogram starts.

The upgrade BACKFILLS the counters from the existing log (one pass over deliveries,
one over deliveries joined with events: minutes on millions of rows) and marks every
outbox row already there folded: they are in the recount. Issue 21, item 6.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import notifier.store.schema
from notifier.store.counters import rebuild

revision = "0016"
# The latest migration on this branch; the lead re-chains at merge.
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_counters",
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.String(length=400), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "labels", name=op.f("pk_metric_counters")),
    )
    with op.batch_alter_table("status_outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("send_outcome", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("folded", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_status_outbox_unfolded",
        "status_outbox",
        ["sequence"],
        postgresql_where=sa.text("NOT folded"),
        sqlite_where=sa.text("NOT folded"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("published_at", notifier.store.schema.UTCDateTime(), nullable=True)
        )
    op.create_index(
        "ix_deliveries_dead_letters",
        "deliveries",
        ["channel"],
        postgresql_where=sa.text("exhausted"),
        sqlite_where=sa.text("exhausted"),
    )
    # The counters start from what the log holds; the outbox rows now present are in
    # that recount, so they are marked folded (in this transaction).
    rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_deliveries_dead_letters", table_name="deliveries")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("published_at")
    op.drop_index("ix_status_outbox_unfolded", table_name="status_outbox")
    with op.batch_alter_table("status_outbox", schema=None) as batch_op:
        batch_op.drop_column("folded")
        batch_op.drop_column("send_outcome")
    op.drop_table("metric_counters")
