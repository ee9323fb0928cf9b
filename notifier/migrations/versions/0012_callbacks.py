"""callbacks: publishers' callback targets and the callbacks due to them

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = "0012"
# The latest migration on this branch; the lead re-chains it after 0011 at merge.
down_revision = "0011"
branch_labels = None
depends_on = None

UTC = notifier.store.schema.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "callback_targets",
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("publisher_kind", sa.String(length=16), nullable=False),
        sa.Column("publisher_name", sa.String(length=100), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secrets", sa.Text(), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("updated_at", UTC(timezone=True), nullable=False),
        sa.Column("last_success_at", UTC(timezone=True), nullable=True),
        sa.Column("last_failure_at", UTC(timezone=True), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("target_id", name=op.f("pk_callback_targets")),
        sa.UniqueConstraint(
            "publisher_kind", "publisher_name", name="uq_callback_targets_publisher"
        ),
    )
    op.create_table(
        "callback_deliveries",
        sa.Column("callback_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(length=100), nullable=False),
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("agency", sa.String(length=64), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", UTC(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("window_start", UTC(timezone=True), nullable=False),
        sa.Column("updated_at", UTC(timezone=True), nullable=False),
        sa.Column("delivered_at", UTC(timezone=True), nullable=True),
        sa.Column("dead_at", UTC(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["callback_targets.target_id"],
            name=op.f("fk_callback_deliveries_target_id_callback_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("callback_id", name=op.f("pk_callback_deliveries")),
        sa.UniqueConstraint("message_id", "target_id", name="uq_callback_deliveries_key"),
    )
    op.create_index(
        "ix_callback_deliveries_due", "callback_deliveries", ["status", "due_at"], unique=False
    )
    op.create_index(
        op.f("ix_callback_deliveries_target_id"),
        "callback_deliveries",
        ["target_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_callback_deliveries_target_id"), table_name="callback_deliveries")
    op.drop_index("ix_callback_deliveries_due", table_name="callback_deliveries")
    op.drop_table("callback_deliveries")
    op.drop_table("callback_targets")
