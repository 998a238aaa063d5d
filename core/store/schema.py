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

# -- greylisting (the greylist plugin) --------------------------------------------------------

greylist_triplets = Table(
    "greylist_triplets",
    metadata,
    Column("key", String(64), primary_key=True, doc="sha256 of client network, sender, recipient"),
    Column("client", String(64), nullable=False, doc="the client's network (192.0.2.0/24)"),
    Column("sender", Text, nullable=False, doc="the sender as compared (normalised)"),
    Column("recipient", Text, nullable=False),
    Column("first_seen", Float, nullable=False, doc="the attempt the delay counts from"),
    Column("last_seen", Float, nullable=False),
    Column("passed", Float, nullable=True, doc="when it first got through; NULL: not yet"),
    Column("attempts", Integer, nullable=False, doc="attempts refused since first_seen"),
    Index("greylist_triplets_last_seen", "last_seen"),
)

greylist_clients = Table(
    "greylist_clients",
    metadata,
    Column("client", String(64), primary_key=True, doc="the client's network"),
    Column("passes", Integer, nullable=False, doc="messages that got through greylisting"),
    Column("last_seen", Float, nullable=False, doc="the last of them"),
    Index("greylist_clients_last_seen", "last_seen"),
)
