"""deliveries: three redundant indexes dropped; room on each page for HOT updates

Every delivery is written four times on the send path (insert, claim, dispatch mark,
outcome), and each write that is not a HOT update adds an entry to every index of the
table: thirteen. Three of them lead with a column another index already leads with, so
no query needs them:

- ``ix_deliveries_event_id``: ``uq_deliveries_key`` is (event_id, channel, recipient_hash);
- ``ix_deliveries_status``: ``ix_deliveries_held_due`` is (status, due_at);
- ``ix_deliveries_recipient_hash``: ``ix_deliveries_cap`` is (recipient_hash, channel,
  counted_at).

On PostgreSQL the table also keeps 15 % of each new page free (fillfactor 85): the
dispatch mark changes no indexed column, so with room on the row's page it is a HOT
update that touches no index at all. At fillfactor 100 the pages were full and 3 of
24,000 updates in a burst were HOT. Existing pages keep their fill until rewritten.
Issue 21 (throughput).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 16:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_REDUNDANT = {
    "ix_deliveries_event_id": "event_id",
    "ix_deliveries_status": "status",
    "ix_deliveries_recipient_hash": "recipient_hash",
}
FILLFACTOR = 85


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        for name in _REDUNDANT:
            batch.drop_index(name)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE deliveries SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries RESET (fillfactor)")
    with op.batch_alter_table("deliveries") as batch:
        for name, column in _REDUNDANT.items():
            batch.create_index(name, [column], unique=False)
