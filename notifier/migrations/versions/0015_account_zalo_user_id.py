"""preferences.zalo_user_id: a portal account's Zalo user id, encrypted

The portal may store the account's Zalo user id so that "zalo|sms" goes by UID (ZBS,
the cheapest) for events that carry none. Fernet-encrypted with a key derived from
NOTIFIER_SECRET_KEY (notifier.store.preferences). Issue 19, item 3.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 11:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
# The latest migration on this branch; the lead re-chains at merge.
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("preferences") as batch:
        batch.add_column(sa.Column("zalo_user_id", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("preferences") as batch:
        batch.drop_column("zalo_user_id")
