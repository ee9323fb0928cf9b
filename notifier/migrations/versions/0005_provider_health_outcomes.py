"""provider health: when the circuit opened and the latest success and failure

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provider_health", schema=None) as batch_op:
        for name in ("opened_at", "last_success_at", "last_failure_at"):
            batch_op.add_column(
                sa.Column(name, notifier.store.schema.UTCDateTime(timezone=True), nullable=True)
            )


def downgrade() -> None:
    with op.batch_alter_table("provider_health", schema=None) as batch_op:
        for name in ("last_failure_at", "last_success_at", "opened_at"):
            batch_op.drop_column(name)
