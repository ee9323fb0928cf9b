"""deliveries.exhausted: a failure that used up its retries, a column instead of a prefix

Until now the sender marked such a failure only by starting ``last_error`` with
"gave up after N attempts: ", and the dead-letter reports found it with LIKE. The
column is filled from that text for the rows written before it existed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# What the sender wrote before this column (kept in the text, for people, after it).
_GAVE_UP_PREFIX = "gave up after "


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("exhausted", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    deliveries = sa.table(
        "deliveries",
        sa.column("status", sa.String),
        sa.column("last_error", sa.Text),
        sa.column("exhausted", sa.Boolean),
    )
    # Only failures: a replayed delivery keeps its old text but is queued again.
    op.execute(
        deliveries.update()
        .where(
            deliveries.c.status == "permanent-failure",
            deliveries.c.last_error.like(_GAVE_UP_PREFIX + "%"),
        )
        .values(exhausted=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("exhausted")
