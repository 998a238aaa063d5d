"""Trace information: the ``Received:`` header (RFC 5321 section 4.4) and the hop count.

Only the SMTP ingress writes these; they describe the client connection, not a plugin's view.
"""

from __future__ import annotations

import email.utils

from mailgate.message import Header
from mailgate.session import Session, Transaction

PROTOCOL_NOTE = "protocol"
"""`Transaction.notes` key holding the RFC 3848/6531 protocol name (``ESMTPS``, ...)."""


def protocol_name(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The ``with`` keyword of RFC 3848 (SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA) or RFC 6531
    (UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA) for this session and message."""
    if not esmtp:
        return "SMTP"
    suffix = ("S" if tls else "") + ("A" if authenticated else "")
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + suffix


def received_header(session: Session, transaction: Transaction, *, hostname: str) -> Header:
    """The ``Received:`` header this host adds for `transaction`, folded as Postfix folds it::

    Received: from client.example (mail.client.example [192.0.2.1])
            (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)
            by mx.example (mailgate) with ESMTPS id t1a2b-8
            for <rcpt@example.net>; Wed, 26 Nov 2026 01:50:00 +0000
    """
    name = _clean(session.client_name) or "unknown"
    lines = [f"from {_clean(session.helo) or 'unknown'} ({name} [{_address(session.client_ip)}])"]
    if session.tls and session.tls_version:
        lines.append(
            f"(using {_clean(session.tls_version)} with cipher {_clean(session.tls_cipher)})"
        )
    protocol = transaction.notes.get(PROTOCOL_NOTE, "ESMTP")
    lines.append(f"by {_clean(hostname)} (mailgate) with {protocol} id {transaction.id}")
    date = email.utils.formatdate(localtime=True)
    if len(transaction.recipients) == 1:
        lines.append(f"for <{_clean(transaction.recipients[0].address, address=True)}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(date)
    return Header("Received", " " + "\r\n\t".join(lines))


def count_received(headers: list[Header]) -> int:
    """How many ``Received:`` headers `headers` holds (the hop count)."""
    return sum(1 for h in headers if h.name.lower() == "received")


def _address(ip: str) -> str:
    return f"IPv6:{ip}" if ":" in ip else ip


def _clean(text: str, *, address: bool = False) -> str:
    """`text` with anything that could end the header or unbalance a comment replaced by ``?``:
    a HELO name is whatever the client sent, bare CR included. An `address` (already checked
    by the RCPT parser) keeps spaces, parentheses and non-ASCII (SMTPUTF8)."""
    if address:
        return "".join(c if ord(c) >= 32 and ord(c) != 127 else "?" for c in text)
    return "".join(c if 33 <= ord(c) < 127 and c not in "()\\" else "?" for c in text)
