"""The queue: messages (the content stored once) and their recipients.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("transaction", sa.String(64), nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("sender_params", sa.Text, nullable=False),
        sa.Column("envid", sa.Text, nullable=True),
        sa.Column("ret", sa.String(8), nullable=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("next_attempt", sa.Float, nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("header_size", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    op.create_index("messages_due", "messages", ["next_attempt"])
    op.create_table(
        "recipients",
        sa.Column(
            "message_id",
            sa.String(32),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("notify", sa.String(64), nullable=True),
        sa.Column("orcpt", sa.Text, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", sa.Float, nullable=True),
        sa.Column("last_reply", sa.Text, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recipients")
    op.drop_index("messages_due", table_name="messages")
    op.drop_table("messages")
