"""DMARC reports: evaluations recorded per message, the periods to report, the reports sent,
and the reports received.

Revision ID: 0004_reports
Revises: 0003_quarantine
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_reports"
down_revision = "0003_quarantine"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dmarc_evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("recorded", sa.Float, nullable=False),
        sa.Column("period_begin", sa.Integer, nullable=False),
        sa.Column("period_end", sa.Integer, nullable=False),
        sa.Column("policy_domain", sa.String(255), nullable=False),
        sa.Column("header_from", sa.String(255), nullable=False),
        sa.Column("envelope_from", sa.String(255), nullable=False),
        sa.Column("source_ip", sa.String(45), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False),
        sa.Column("dkim_aligned", sa.String(8), nullable=False),
        sa.Column("spf_aligned", sa.String(8), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("auth_results", sa.Text, nullable=False),
        sa.Column("policy", sa.Text, nullable=False),
        sa.Column("rua", sa.Text, nullable=False),
    )
    op.create_index(
        "dmarc_evaluations_period", "dmarc_evaluations", ["policy_domain", "period_begin"]
    )
    op.create_index("dmarc_evaluations_recorded", "dmarc_evaluations", ["recorded"])
    op.create_table(
        "dmarc_periods",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("period_begin", sa.Integer, primary_key=True),
        sa.Column("period_end", sa.Integer, nullable=False),
    )
    op.create_index("dmarc_periods_end", "dmarc_periods", ["period_end"])
    op.create_table(
        "dmarc_reports",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("period_begin", sa.Integer, nullable=False),
        sa.Column("period_end", sa.Integer, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("destinations", sa.Text, nullable=False),
        sa.UniqueConstraint("domain", "period_begin", name="dmarc_reports_once"),
    )
    op.create_index("dmarc_reports_created", "dmarc_reports", ["created"])
    op.create_table(
        "dmarc_received",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("received", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("mail_from", sa.Text, nullable=False),
        sa.Column("org_name", sa.Text, nullable=False),
        sa.Column("report_id", sa.Text, nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("period_begin", sa.Integer, nullable=False),
        sa.Column("period_end", sa.Integer, nullable=False),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=True),
    )
    op.create_index("dmarc_received_received", "dmarc_received", ["received"])
    op.create_index("dmarc_received_domain", "dmarc_received", ["domain"])


def downgrade() -> None:
    op.drop_index("dmarc_received_domain", table_name="dmarc_received")
    op.drop_index("dmarc_received_received", table_name="dmarc_received")
    op.drop_table("dmarc_received")
    op.drop_index("dmarc_reports_created", table_name="dmarc_reports")
    op.drop_table("dmarc_reports")
    op.drop_index("dmarc_periods_end", table_name="dmarc_periods")
    op.drop_table("dmarc_periods")
    op.drop_index("dmarc_evaluations_recorded", table_name="dmarc_evaluations")
    op.drop_index("dmarc_evaluations_period", table_name="dmarc_evaluations")
    op.drop_table("dmarc_evaluations")
