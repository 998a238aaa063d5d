"""The quarantine: held messages with their envelope, verdict and release.

Revision ID: 0003_quarantine
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_quarantine"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("session", sa.String(64), nullable=False),
        sa.Column("transaction", sa.String(64), nullable=False),
        sa.Column("ingress", sa.String(16), nullable=False),
        sa.Column("listener", sa.String(255), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("client_name", sa.Text, nullable=False),
        sa.Column("helo", sa.Text, nullable=False),
        sa.Column("auth_login", sa.Text, nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("sender_params", sa.Text, nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("plugin", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("results", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("released", sa.Float, nullable=True),
        sa.Column("released_by", sa.Text, nullable=True),
        sa.Column("release_result", sa.Text, nullable=True),
        sa.Column("header_size", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    op.create_index("quarantine_created", "quarantine", ["created"])


def downgrade() -> None:
    op.drop_index("quarantine_created", table_name="quarantine")
    op.drop_table("quarantine")
