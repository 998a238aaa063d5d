"""Failure reports (RFC 7489 7.3, RFC 6591): one AFRF message about one message that failed.

`wanted` reads the domain's ``fo`` (a colon-separated list of ``0``, ``1``, ``d``, ``s``):

- ``0`` (the default): DMARC failed (no mechanism gave an aligned pass);
- ``1``: any mechanism did not give an aligned pass (DKIM or SPF);
- ``d``: a DKIM signature failed to verify, aligned or not;
- ``s``: SPF failed (``fail`` or ``softfail``), aligned or not.

`FailureReport.build` makes the ``multipart/report; report-type=feedback-report`` message:
a human-readable part, the ``message/feedback-report`` part (``Feedback-Type: auth-failure``,
``Auth-Failure: dmarc``, the source, the domain, the results) and the original's header
block (``text/rfc822-headers``; never the body), with the local parts of its addresses
replaced when redaction is on.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import secrets
from dataclasses import dataclass

from mailgate import __version__
from mailgate.plugins.dmarc import Evaluation

_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9.-]+)")
_ADDRESS_FIELDS = frozenset(
    {"from", "to", "cc", "bcc", "sender", "reply-to", "return-path", "delivered-to"}
)
_DELIVERY = {"none": "delivered", "quarantine": "spam", "reject": "reject"}


def wanted(evaluation: Evaluation, fo: str) -> bool:
    """True when the domain's ``fo`` options ask for a report about `evaluation`."""
    options = {o.strip().lower() for o in fo.split(":")} or {"0"}
    if "0" in options and evaluation.result == "fail":
        return True
    if "1" in options and "fail" in (evaluation.dkim_aligned, evaluation.spf_aligned):
        return True
    if "d" in options and any(s.result == "fail" for s in evaluation.dkim):
        return True
    spf = evaluation.spf
    return "s" in options and spf is not None and spf.result in ("fail", "softfail")


def redact(text: str) -> str:
    """`text` with the local part of every address replaced by a short hash: the same
    address gives the same stand-in, so a domain owner can still group them."""

    def stand_in(match: re.Match[str]) -> str:
        local = match.group(0).rpartition("@")[0]
        digest = hashlib.sha256(local.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        return f"redacted-{digest}@{match.group(1)}"

    return _ADDRESS.sub(stand_in, text)


def redact_headers(block: str) -> str:
    """A header block with the addresses of its address fields (From, To, Cc, Sender,
    Reply-To, Return-Path, Delivered-To, Resent-*) redacted; other fields as they are."""
    fields: list[str] = []
    for line in block.splitlines(keepends=True):
        if fields and line[:1] in (" ", "\t"):
            fields[-1] += line
        else:
            fields.append(line)
    out = []
    for field in fields:
        name = field.partition(":")[0].strip().lower()
        out.append(
            redact(field) if name in _ADDRESS_FIELDS or name.startswith("resent-") else field
        )
    return "".join(out)


@dataclass(frozen=True, slots=True)
class FailureReport:
    """What a failure report says about one message."""

    org_name: str
    sender: str
    submitter: str
    evaluation: Evaluation
    mail_from: str
    arrival: float
    headers: bytes
    """The original's header block, as it arrived."""

    def build(self, to: str, *, redacted: bool) -> bytes:
        """The report for `to`, CRLF line ends."""
        e = self.evaluation
        domain = e.header_from
        boundary = f"=_mailgate_{secrets.token_hex(12)}"
        headers = self.headers.decode("utf-8", "replace")
        headers = redact_headers(headers) if redacted else headers
        original_cte = "7bit" if headers.isascii() else "8bit"
        head = [
            f"From: {email.utils.formataddr((self.org_name, self.sender))}",
            f"To: {to}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            f"Message-ID: {email.utils.make_msgid(domain=self.submitter)}",
            f"Subject: DMARC failure report for {domain} from {e.source_ip}",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"',
        ]
        text = (
            f"This is an authentication failure report (RFC 7489 7.3) from {self.org_name}\r\n"
            f"about a message from {e.source_ip} with From: domain {domain}, received\r\n"
            f"{email.utils.formatdate(self.arrival, usegmt=True)}. DMARC: {e.result} "
            f"(DKIM aligned: {e.dkim_aligned}, SPF aligned: {e.spf_aligned});\r\n"
            f"what was done: {e.disposition}.\r\n"
        )
        parts = [
            f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            f"Content-Transfer-Encoding: 7bit\r\n\r\n{text}",
            f"--{boundary}\r\nContent-Type: message/feedback-report\r\n"
            f"Content-Transfer-Encoding: 7bit\r\n\r\n{self._fields(redacted)}",
            f"--{boundary}\r\nContent-Type: text/rfc822-headers; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {original_cte}\r\n\r\n{_crlf(headers)}",
            f"--{boundary}--\r\n",
        ]
        return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(parts)).encode("utf-8")

    def _fields(self, redacted: bool) -> str:
        e = self.evaluation
        mail_from = redact(self.mail_from) if redacted else self.mail_from
        aligned = [m for m, r in (("dkim", e.dkim_aligned), ("spf", e.spf_aligned)) if r == "pass"]
        lines = [
            "Feedback-Type: auth-failure",
            f"User-Agent: mailgate/{__version__}",
            "Version: 1",
            f"Original-Mail-From: <{mail_from}>",
            f"Arrival-Date: {email.utils.formatdate(self.arrival, usegmt=True)}",
            f"Reporting-MTA: dns; {self.submitter}",
            f"Source-IP: {e.source_ip}",
            f"Reported-Domain: {e.header_from}",
            f"Authentication-Results: {self.submitter}; dmarc={e.result} "
            f"header.from={e.header_from}",
            "Auth-Failure: dmarc",
            f"Identity-Alignment: {','.join(aligned) or 'none'}",
            f"Delivery-Result: {_DELIVERY.get(e.disposition, 'other')}",
        ]
        for signature in e.dkim:
            if signature.result != "pass":
                lines += [
                    f"DKIM-Domain: {signature.domain}",
                    f"DKIM-Selector: {signature.selector}",
                ]
                break
        return "\r\n".join(lines) + "\r\n"


def _crlf(text: str) -> str:
    """`text` with CRLF line ends, ending in one."""
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    return "\r\n".join(lines) + "\r\n"
