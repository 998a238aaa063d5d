"""The store's tables, as SQLAlchemy Core sees them; ``migrations/`` creates them.

A change here needs a new Alembic revision in ``migrations/versions``
(tests/store/test_migrations.py fails while the two differ).

Times are seconds since the epoch (float): the same type on SQLite and PostgreSQL, compared
with the node's clock (nodes sharing a PostgreSQL store need NTP, as leases do anyway).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created", Float, nullable=False),
    Column("node", String(255), nullable=False, doc="the node that accepted it"),
    Column("transaction", String(64), nullable=False, doc="the transaction id in the logs"),
    Column("sender", Text, nullable=False, doc="the reverse path; empty for <>"),
    Column("sender_params", Text, nullable=False, doc="MAIL FROM parameters, a JSON list"),
    Column("envid", Text, nullable=True, doc="ENVID= (RFC 3461), xtext as given"),
    Column("ret", String(8), nullable=True, doc="RET=FULL or HDRS"),
    Column("size", Integer, nullable=False),
    Column("next_attempt", Float, nullable=True, doc="earliest due recipient; NULL: nothing due"),
    Column("lease_owner", String(255), nullable=True, doc="the node delivering it now"),
    Column("lease_until", Float, nullable=True, doc="when that lease expires"),
    Column("header_size", Integer, nullable=False, doc="bytes of `content` before the body"),
    Column("held_since", Float, nullable=True, doc="set: on hold (not delivered) since then"),
    Column("held_reason", Text, nullable=True, doc="why, and by whom, it is held"),
    Column("delay_warned", Float, nullable=True, doc="when the delay DSN was queued, if it was"),
    # Last: SQLite reads a row's overflow pages only when this column is asked for.
    Column("content", LargeBinary, nullable=False, doc="the message as it is sent, once"),
    Index("messages_due", "next_attempt"),
)

recipients = Table(
    "recipients",
    metadata,
    Column(
        "message_id",
        String(32),
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("address", Text, nullable=False),
    Column("params", Text, nullable=False, doc="RCPT TO parameters, a JSON list"),
    Column("notify", String(64), nullable=True, doc="NOTIFY= as given"),
    Column("orcpt", Text, nullable=True, doc="ORCPT= as given"),
    Column("state", String(16), nullable=False, doc="pending, deferred, delivered, bounced"),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt", Float, nullable=True),
    Column("last_reply", Text, nullable=False, doc="the last reply, or what failed"),
    Column("updated", Float, nullable=False),
    Column("remote_mta", Text, nullable=True, doc="the next hop that gave `last_reply`"),
    Column(
        "notified",
        String(16),
        nullable=True,
        doc="the last DSN queued for this recipient: failure, delay, success (RFC 3464)",
    ),
)

PENDING, DEFERRED, DELIVERED, BOUNCED = "pending", "deferred", "delivered", "bounced"
"""A recipient's states: not tried yet; tried and refused for now (4xx, or the next hop
could not be reached); accepted by the next hop; refused for good (5xx)."""
UNDELIVERED = (PENDING, DEFERRED)

# -- the quarantine (revision 0003_quarantine) ----------------------------------------------------

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created", Float, nullable=False),
    Column("node", String(255), nullable=False, doc="the node that held it"),
    Column("session", String(64), nullable=False, doc="the session id in the logs"),
    Column("transaction", String(64), nullable=False, doc="the transaction id in the logs"),
    Column("ingress", String(16), nullable=False, doc="smtp (the milter listener never holds)"),
    Column("listener", String(255), nullable=False),
    Column("client_ip", String(64), nullable=False),
    Column("client_name", Text, nullable=False),
    Column("helo", Text, nullable=False),
    Column("auth_login", Text, nullable=False),
    Column("sender", Text, nullable=False, doc="the reverse path; empty for <>"),
    Column("sender_params", Text, nullable=False, doc="MAIL FROM parameters, a JSON list"),
    Column("recipients", Text, nullable=False, doc='[{"address": ..., "params": [...]}, ...]'),
    Column("plugin", String(255), nullable=False, doc="the plugin that asked; empty if unknown"),
    Column("reason", Text, nullable=False),
    Column("results", Text, nullable=False, doc="each plugin's result, a JSON object"),
    Column("subject", Text, nullable=False, doc="for listings; the content has the real one"),
    Column("size", Integer, nullable=False),
    Column("released", Float, nullable=True, doc="when it was released; NULL: still held"),
    Column("released_by", Text, nullable=True),
    Column("release_result", Text, nullable=True, doc="what the way out said"),
    Column("header_size", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False, doc="the message as plugins left it"),
    Index("quarantine_created", "created"),
)
