"""deliveries: segments, cost_vnd, cost_source (what a send cost) and superseded_by
(coalescing: the delivery sent in place of this one)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
# The lead re-chains this at merge (0010 and 0011 come from other branches).
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("segments", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cost_vnd", sa.Numeric(14, 2), nullable=True))
        batch_op.add_column(sa.Column("cost_source", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("superseded_by", sa.Uuid(), nullable=True))
        batch_op.create_index("ix_deliveries_superseded_by", ["superseded_by"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_superseded_by")
        batch_op.drop_column("superseded_by")
        batch_op.drop_column("cost_source")
        batch_op.drop_column("cost_vnd")
        batch_op.drop_column("segments")
