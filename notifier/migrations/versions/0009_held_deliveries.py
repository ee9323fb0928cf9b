"""Held deliveries: status "scheduled" with a due time and a reason

One mechanism for every delivery that waits for a time (quiet hours, frequency caps,
coalescing): the row itself, found by the sweeper through (status, due_at), never a
long broker delay.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from notifier.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("hold_reason", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_deliveries_held_due", ["status", "due_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_held_due")
        batch_op.drop_column("hold_reason")
        batch_op.drop_column("due_at")
