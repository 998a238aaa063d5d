"""Greylisting: the triplets seen and the clients whitelisted automatically.

Revision ID: 0005_greylist
Revises: 0004_reports
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_greylist"
down_revision = "0004_reports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "greylist_triplets",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("passed", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_index("greylist_triplets_last_seen", "greylist_triplets", ["last_seen"])
    op.create_table(
        "greylist_clients",
        sa.Column("client", sa.String(64), primary_key=True),
        sa.Column("passes", sa.Integer, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_index("greylist_clients_last_seen", "greylist_clients", ["last_seen"])


def downgrade() -> None:
    op.drop_index("greylist_clients_last_seen", table_name="greylist_clients")
    op.drop_table("greylist_clients")
    op.drop_index("greylist_triplets_last_seen", table_name="greylist_triplets")
    op.drop_table("greylist_triplets")
