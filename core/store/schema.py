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
    UniqueConstraint,
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


# -------------------------------------------------------------------------------------------
# DMARC reports (the ``reports`` plugin, revision 0004_reports)
# -------------------------------------------------------------------------------------------

dmarc_evaluations = Table(
    "dmarc_evaluations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded", Float, nullable=False, doc="when the message was evaluated"),
    Column("period_begin", Integer, nullable=False, doc="the report period it belongs to"),
    Column("period_end", Integer, nullable=False),
    Column("policy_domain", String(255), nullable=False, doc="where the DMARC record was found"),
    Column("header_from", String(255), nullable=False),
    Column("envelope_from", String(255), nullable=False),
    Column("source_ip", String(45), nullable=False),
    Column("result", String(16), nullable=False, doc="the DMARC result: pass or fail"),
    Column("disposition", String(16), nullable=False, doc="none, quarantine or reject"),
    Column("dkim_aligned", String(8), nullable=False, doc="pass or fail"),
    Column("spf_aligned", String(8), nullable=False, doc="pass or fail"),
    Column("reasons", Text, nullable=False, doc="override reasons, a JSON list; '' for none"),
    Column("auth_results", Text, nullable=False, doc="the DKIM and SPF results, JSON"),
    Column("policy", Text, nullable=False, doc="the policy published, JSON"),
    Column("rua", Text, nullable=False, doc="the rua URIs published, comma-separated"),
    Index("dmarc_evaluations_period", "policy_domain", "period_begin"),
    Index("dmarc_evaluations_recorded", "recorded"),
)

dmarc_periods = Table(
    "dmarc_periods",
    metadata,
    Column("domain", String(255), primary_key=True, doc="a policy domain that asked for rua"),
    Column("period_begin", Integer, primary_key=True),
    Column("period_end", Integer, nullable=False),
    # Written with each batch of evaluations (insert if missing): the reporting job looks
    # here for periods to report, not through every evaluation.
    Index("dmarc_periods_end", "period_end"),
)

dmarc_reports = Table(
    "dmarc_reports",
    metadata,
    Column("id", String(64), primary_key=True, doc="the report id (report_metadata)"),
    Column("domain", String(255), nullable=False, doc="the policy domain reported on"),
    Column("period_begin", Integer, nullable=False),
    Column("period_end", Integer, nullable=False),
    Column("node", String(255), nullable=False, doc="the node that built it"),
    Column("created", Float, nullable=False),
    Column("state", String(16), nullable=False, doc="sent, undeliverable"),
    Column("messages", Integer, nullable=False, doc="messages counted in it"),
    Column("records", Integer, nullable=False, doc="<record> elements"),
    Column("size", Integer, nullable=False, doc="bytes of the gzipped XML"),
    Column("destinations", Text, nullable=False, doc="JSON: each rua URI and what became of it"),
    # Unique: of several nodes building the same report at once, one commits; the others'
    # transactions (with their queued mail) are rolled back.
    UniqueConstraint("domain", "period_begin", name="dmarc_reports_once"),
    Index("dmarc_reports_created", "created"),
)

dmarc_received = Table(
    "dmarc_received",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("received", Float, nullable=False),
    Column("kind", String(16), nullable=False, doc="aggregate, failure, tlsrpt or malformed"),
    Column("mail_from", Text, nullable=False, doc="the envelope sender of the mail"),
    Column("org_name", Text, nullable=False, doc="who reported"),
    Column("report_id", Text, nullable=False),
    Column("domain", String(255), nullable=False, doc="the domain reported on"),
    Column("period_begin", Integer, nullable=False),
    Column("period_end", Integer, nullable=False),
    Column("messages", Integer, nullable=False, doc="messages (sessions, for TLS) counted"),
    Column("passed", Integer, nullable=False, doc="of them, passing (successful)"),
    Column("detail", Text, nullable=False, doc="records or fields, JSON"),
    Column("error", Text, nullable=False, doc="why a malformed report could not be read"),
    Column("raw", LargeBinary, nullable=True, doc="the undecoded part of a malformed report"),
    Index("dmarc_received_received", "received"),
    Index("dmarc_received_domain", "domain"),
)


# -- greylisting (the greylist plugin, revision 0005_greylist) -------------------------------

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
