"""Preferences: the citizen's choices (channels, language, quiet hours), their audit,
and the delivery columns the send-time gate needs (caps, identical content, reasons)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from notifier.store.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "preferences",
        sa.Column("identity_hash", sa.String(length=64), nullable=False),
        sa.Column("identity_kind", sa.String(length=16), nullable=False),
        sa.Column("channels_off", sa.JSON(), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=True),
        sa.Column("quiet_hours", sa.Boolean(), nullable=True),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("identity_hash", name=op.f("pk_preferences")),
    )
    op.create_table(
        "preference_changes",
        sa.Column("change_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("identity_hash", sa.String(length=64), nullable=False),
        sa.Column("identity_kind", sa.String(length=16), nullable=False),
        sa.Column("changed_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=100), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("change_id", name=op.f("pk_preference_changes")),
    )
    with op.batch_alter_table("preference_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_preference_changes_identity_hash"), ["identity_hash"], unique=False
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("suppressed_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("content_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("counted_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_deliveries_cap", ["recipient_hash", "channel", "counted_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_cap")
        batch_op.drop_column("counted_at")
        batch_op.drop_column("content_hash")
        batch_op.drop_column("suppressed_reason")
        batch_op.drop_column("account_hash")
    with op.batch_alter_table("preference_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_preference_changes_identity_hash"))
    op.drop_table("preference_changes")
    op.drop_table("preferences")
