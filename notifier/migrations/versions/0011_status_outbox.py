"""status outbox: the record of status changes, and what a reject's event could tell

``status_outbox`` holds one row per announced status change, written in the change's
own transaction and published to the status stream by the relay. Rejects keep the
agency and dossier that could be read from them (the status API finds a publisher's
rejects by them after the payload is purged); events count their duplicates.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import notifier.store.schema

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "status_outbox",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("change_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=48), nullable=False),
        sa.Column("agency_code", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", notifier.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("published_at", notifier.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_status_outbox")),
        sa.UniqueConstraint("change_id", name=op.f("uq_status_outbox_change_id")),
    )
    op.create_index(
        "ix_status_outbox_pending",
        "status_outbox",
        ["sequence"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )
    with op.batch_alter_table("rejected_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agency_code", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("dossier_code", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_rejected_events_dossier_code"), ["dossier_code"], unique=False
        )
        batch_op.create_index("ix_rejected_events_event_id", ["event_id"], unique=False)
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("duplicates", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("duplicates")
    with op.batch_alter_table("rejected_events", schema=None) as batch_op:
        batch_op.drop_index("ix_rejected_events_event_id")
        batch_op.drop_index(batch_op.f("ix_rejected_events_dossier_code"))
        batch_op.drop_column("dossier_code")
        batch_op.drop_column("agency_code")
    op.drop_index("ix_status_outbox_pending", table_name="status_outbox")
    op.drop_table("status_outbox")
