"""The corpus through the daemons users run today, the way they run them: milters behind a
real Postfix. opendkim signs (one listener per canonicalisation); opendkim and opendmarc
verify on one listener, rspamd on another. Each message is sent with XCLIENT, so Postfix and
its milters see the case's client address and HELO name, and is delivered to the
``local.test`` Maildir, where its Authentication-Results headers are read back."""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.parser import BytesParser

from tests.differential.corpus import Case
from tests.peers.postfix import Postfix

WORKERS = 8
"""Messages in flight at once (a DNS timeout case must not hold the others up)."""


def send(port: int, case: Case, rcpt: str, *, xclient: bool = True) -> str:
    """Deliver `case` to Postfix's listener `port` for `rcpt`; "" when accepted, otherwise
    Postfix's reply (a milter may refuse the message)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=case.helo, timeout=60) as client:
        if xclient:
            code, reply = client.docmd("XCLIENT", f"ADDR={case.client} NAME=[UNAVAILABLE]")
            assert code == 220, (code, reply)
            client.ehlo(case.helo)
        try:
            client.sendmail(case.mail_from, [rcpt], case.data)
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            text = error.decode(errors="replace") if isinstance(error, bytes) else error
            return f"{exc.smtp_code} {text}"
        except smtplib.SMTPRecipientsRefused as exc:
            refused_code, refused_text = next(iter(exc.recipients.values()))
            return f"{refused_code} {refused_text.decode(errors='replace')}"
    return ""


def send_all(
    port: int, cases: Iterable[Case], rcpt: str, *, xclient: bool = True
) -> dict[str, str]:
    """`send` every case, WORKERS at a time; case name -> refusal ("" when accepted)."""
    cases = list(cases)
    with ThreadPoolExecutor(WORKERS) as pool:
        replies = pool.map(lambda c: send(port, c, rcpt, xclient=xclient), cases)
        return {case.name: reply for case, reply in zip(cases, replies, strict=True)}


@dataclass(slots=True)
class Delivered:
    """What came out of Postfix for one case: the message, or the refusal."""

    data: bytes = b""  # CRLF line ends, as delivered (with Postfix's own headers)
    refused: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)  # unfolded

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def collect(
    postfix: Postfix, rcpt: str, refused: Mapping[str, str], timeout: float = 60.0
) -> dict[str, Delivered]:
    """The delivered copies for `rcpt`, by case name (from the Message-ID), and the refused."""
    expected = sum(1 for reply in refused.values() if not reply)
    out = {name: Delivered(refused=reply) for name, reply in refused.items() if reply}
    deadline = time.monotonic() + timeout
    while True:
        delivered = [d for d in postfix.delivered() if d.delivered_to == rcpt]
        if len(delivered) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(delivered) == expected, f"{len(delivered)} of {expected} delivered to {rcpt}"
    for d in delivered:
        parsed = BytesParser().parsebytes(d.data, headersonly=True)
        name = re.sub(r"^<|@corpus\.example\.org>$", "", str(parsed["Message-ID"]).strip())
        headers = [(k, " ".join(str(v).split())) for k, v in parsed.items()]
        data = d.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out[name] = Delivered(data, "", headers)
    return out


def strip_delivery_headers(data: bytes) -> bytes:
    """A signed copy without what the signing pass added around the signature: Return-Path,
    Delivered-To and Received (none of them signed)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?=[^ \t])", head)
    dropped = (b"return-path:", b"delivered-to:", b"received:")
    return b"\r\n".join(f for f in fields if not f.lower().startswith(dropped)) + sep + body
