"""agency identity: who submitted a reject, its raw bytes, broker publishers' agencies

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "broker_publishers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("agencies", sa.JSON(), nullable=False),
        sa.Column("created_at", notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_broker_publishers")),
    )
    with op.batch_alter_table("rejected_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload_raw", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("submitter_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("submitter_name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("submitter_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("submitter_agencies", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("replay_refusal", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rejected_events", schema=None) as batch_op:
        batch_op.drop_column("replay_refusal")
        batch_op.drop_column("submitter_agencies")
        batch_op.drop_column("submitter_id")
        batch_op.drop_column("submitter_name")
        batch_op.drop_column("submitter_kind")
        batch_op.drop_column("payload_raw")
    op.drop_table("broker_publishers")
