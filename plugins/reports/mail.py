"""Report mail (RFC 7489 7.2.1.1 and 7.2.2): the message that carries an aggregate report,
and the error report sent instead when the report is larger than a destination takes.

The file name is ``receiver!policy-domain!begin!end.xml.gz``; the subject is
``Report Domain: <domain> Submitter: <receiver> Report-ID: <id>``; the report is a
``application/gzip`` attachment beside a short text part.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP


@dataclass(frozen=True, slots=True)
class ReportMail:
    """What every mail about one report shares."""

    org_name: str
    sender: str
    submitter: str
    domain: str
    report_id: str
    begin: int
    end: int

    @property
    def filename(self) -> str:
        """The attachment's name (RFC 7489 7.2.1.1)."""
        return f"{self.submitter}!{self.domain}!{self.begin}!{self.end}.xml.gz"

    @property
    def message_id(self) -> str:
        """The report's msg-id, as the subject and Message-ID carry it."""
        return f"<{self.report_id}@{self.submitter}>"

    @property
    def subject(self) -> str:
        """The subject the RFC specifies."""
        return (
            f"Report Domain: {self.domain} Submitter: {self.submitter} Report-ID: {self.message_id}"
        )

    def _headers(self, to: str, message_id: str) -> EmailMessage:
        message = EmailMessage(policy=SMTP)
        message["From"] = email.utils.formataddr((self.org_name, self.sender))
        message["To"] = to
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["Message-ID"] = message_id
        message["Subject"] = self.subject
        message["Auto-Submitted"] = "auto-generated"
        return message

    def aggregate(self, to: str, report: bytes, records: int, messages: int) -> bytes:
        """The mail carrying `report` (gzipped XML) to `to`."""
        message = self._headers(to, self.message_id)
        message.set_content(
            f"This is a DMARC aggregate report from {self.org_name} for {self.domain}:\n"
            f"{messages} messages in {records} records, from {_utc(self.begin)} "
            f"to {_utc(self.end)} (UTC).\n"
        )
        message.add_attachment(
            report, maintype="application", subtype="gzip", filename=self.filename
        )
        return message.as_bytes()

    def too_large(self, to: str, uri: str, size: int) -> bytes:
        """The error report (RFC 7489 7.2.2) for a destination whose ``!size`` is below the
        report's `size`."""
        local = self.message_id[1:-1].replace("@", ".error@", 1)
        message = self._headers(to, f"<{local}>")
        message.set_content(
            f"Report-Date: {email.utils.formatdate(usegmt=True)}\n"
            f"Report-Domain: {self.domain}\n"
            f"Report-ID: {self.message_id}\n"
            f"Report-Size: {size}\n"
            f"Submitter: {self.submitter}\n"
            f"Submitting-URI: {uri}\n"
            "\nThe aggregate report is larger than this address accepts, and was not sent.\n"
        )
        return message.as_bytes()


def _utc(timestamp: int) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)
