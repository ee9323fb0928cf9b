"""inbound_messages and inbound_senders: citizens' messages and their rate-limit windows

A citizen's SMS (forwarded by a gateway) or Zalo text, kept masked with what it asked
and what came of it; the reply is an ordinary delivery. Issue 20.

Revision ID: 0014
Revises: 0008
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from notifier.store.schema import UTCDateTime

revision = "0014"
# The latest migration on this branch; the lead re-chains at merge (0009-0013 are
# other branches'; main's latest is 0013, cost and coalescing).
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("inbound_id", sa.Uuid(), nullable=False),
        sa.Column("received_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("sender_masked", sa.String(length=128), nullable=False),
        sa.Column("sender_hash", sa.String(length=64), nullable=False),
        sa.Column("text_masked", sa.Text(), nullable=True),
        sa.Column("command", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("dossier_code", sa.String(length=64), nullable=True),
        sa.Column("reply_delivery_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("inbound_id", name=op.f("pk_inbound_messages")),
        sa.UniqueConstraint("provider", "provider_message_id", name="uq_inbound_messages_provider"),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbound_messages_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_inbound_messages_sender_hash"), ["sender_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_inbound_messages_outcome"), ["outcome"], unique=False)
    op.create_table(
        "inbound_senders",
        sa.Column("sender_hash", sa.String(length=64), nullable=False),
        sa.Column("window_started_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sender_hash", name=op.f("pk_inbound_senders")),
    )


def downgrade() -> None:
    op.drop_table("inbound_senders")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_messages_outcome"))
        batch_op.drop_index(batch_op.f("ix_inbound_messages_sender_hash"))
        batch_op.drop_index(batch_op.f("ix_inbound_messages_received_at"))
    op.drop_table("inbound_messages")
