"""The queue, operated: held messages, delay warnings, DSNs sent, the next hop that answered.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("held_since", sa.Float, nullable=True))
        batch.add_column(sa.Column("held_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("delay_warned", sa.Float, nullable=True))
    with op.batch_alter_table("recipients") as batch:
        batch.add_column(sa.Column("remote_mta", sa.Text, nullable=True))
        batch.add_column(sa.Column("notified", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recipients") as batch:
        batch.drop_column("notified")
        batch.drop_column("remote_mta")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("delay_warned")
        batch.drop_column("held_reason")
        batch.drop_column("held_since")
