"""`ReportsSettings`: the ``reports`` plugin's ``conf.d`` file (``95-reports.toml``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Literal

from mailgate.expressions import Expression
from mailgate.plugins.dmarc.domains import normalize

PERIODS = (3600, 7200, 10800, 14400, 21600, 28800, 43200, 86400)
"""Report periods mailgate uses: the divisors of a day in whole hours, so that every period
starts and ends on the same UTC boundaries whichever node computes it."""


@dataclass(slots=True)
class ReportsSettings:
    """Settings of the ``reports`` plugin: who we are in the reports, where they come from,
    how often they go, and how long evaluations are kept."""

    org_name: str
    """``report_metadata/org_name``: the organisation sending the reports (required)."""
    contact: str
    """``report_metadata/email``: an address the domain owners can write to (required)."""
    sender: str
    """The envelope sender and From: of report mail, e.g. ``dmarc-reports@example.net``
    (required). Its domain should have SPF and DKIM of its own: receivers check reports too."""
    extra_contact_info: str = ""
    """``report_metadata/extra_contact_info``: a URL or phone number; empty: left out."""
    submitter: str = ""
    """The reporting host's name in the subject and file name (``Submitter:``); empty: this
    host's fully qualified name."""
    node_id: str = ""
    """This node's name in the reports table; empty: the ``[queue] node_id``, or the host name."""
    min_period: int = 3600
    """The shortest report period, in seconds, whatever ``ri`` asks: one of 3600, 7200, 10800,
    14400, 21600, 28800, 43200, 86400. A domain's period is its ``ri`` rounded down to one of
    these (at least this, at most a day), aligned to UTC midnight."""
    send_delay: float = 600.0
    """Seconds after a period ends before its reports are built: evaluations still in other
    nodes' buffers, and messages in progress at the boundary, get there first."""
    check_interval: float = 300.0
    """Seconds between two looks for periods to report (and for old rows to delete)."""
    flush_interval: float = 1.0
    """Seconds evaluations wait in memory before they are written, together, to the store."""
    max_buffered: int = 50_000
    """Evaluations held in memory at most while the store is slow; past it they are counted
    (``mailgate_dmarc_evaluations_dropped_total``) and dropped, never the mail."""
    retention_days: float = 30.0
    """Evaluations and the record of sent reports older than this are deleted."""
    max_report_size: int = 10 << 20
    """Bytes of gzipped XML at most in one report (a bound on memory); a larger one is not
    sent, and the destinations are told so."""

    failure_reports: bool = False
    """Send failure reports (RFC 7489 7.3) to the ``ruf`` addresses, as each domain's ``fo``
    asks. Off by default: they carry the failing message's header block."""
    redact_local_parts: bool = False
    """In failure reports, replace the local part of every address (in the envelope sender
    and the address header fields) with a hash of it."""
    failure_reports_per_domain: int = 10
    """Failure reports about one domain at most per ``failure_period``, per node; the others
    are counted (``mailgate_dmarc_failure_reports_limited_total``) and not sent."""
    failure_period: float = 3600.0
    """Seconds of the failure reports' rate-limit window (aligned to the epoch)."""

    incoming: Expression = field(default_factory=lambda: Expression("false"))
    """Which recipients are report addresses (CEL, with ``rcpt``), e.g.
    ``rcpt.address in ["dmarc@example.com", "tlsrpt@example.com"]``: mail to them is read as
    reports (aggregate, failure, SMTP TLS) and stored. Default: none."""
    incoming_action: Literal["keep", "deliver"] = "keep"
    """``keep``: a report is stored instead of delivered (its report recipients are taken
    off; a mail with no other recipient is answered 250 once stored, and dropped);
    ``deliver``: stored as well as delivered."""
    max_incoming_part: int = 10 << 20
    """Bytes at most of one report attachment (compressed)."""
    max_decompressed: int = 50 << 20
    """Bytes at most once an attachment is decompressed (a zip bomb stops here)."""
    max_zip_entries: int = 10
    """Files at most in one zip attachment."""

    def __post_init__(self) -> None:
        for key in ("org_name", "contact", "sender"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key}: required (see docs/plugins/reports.md)")
        for key in ("contact", "sender"):
            local, at, domain = getattr(self, key).rpartition("@")
            if not at or not local or not normalize(domain):
                raise ValueError(f"{key}: expected an address local@domain")
        if self.min_period not in PERIODS:
            raise ValueError(f"min_period: one of {', '.join(map(str, PERIODS))}")
        positive = ("send_delay", "check_interval", "flush_interval", "retention_days")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: a positive number of seconds (days for retention)")
        if self.failure_reports_per_domain < 1 or self.failure_period <= 0:
            raise ValueError("failure_reports_per_domain and failure_period must be positive")
        if min(self.max_incoming_part, self.max_decompressed, self.max_zip_entries) < 1:
            raise ValueError("max_incoming_part, max_decompressed, max_zip_entries: positive")
        if self.max_buffered < 1 or self.max_report_size < 1024:
            raise ValueError("max_buffered: at least 1; max_report_size: at least 1024 bytes")

    @property
    def submitter_name(self) -> str:
        """`submitter`, or this host's fully qualified name."""
        return self.submitter or socket.getfqdn()

    def period(self, ri: int) -> int:
        """The report period of a domain that asks for `ri` seconds."""
        fitting = [p for p in PERIODS if self.min_period <= p <= max(ri, self.min_period)]
        return fitting[-1]
