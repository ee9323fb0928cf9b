"""dispatch mark on deliveries (status ``unknown`` needs no schema change)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatch_provider", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("dispatch_attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("dispatch_attempt")
        batch_op.drop_column("dispatch_provider")
