"""Postfix's XFORWARD and XCLIENT: tell the downstream who the original client was.

XFORWARD (XFORWARD_README) changes only what the downstream logs and writes in its
``Received:``; its attributes last for one transaction, so they are sent before every MAIL FROM,
also on a pooled connection and after RSET.

XCLIENT (XCLIENT_README) makes the downstream treat the connection as if the original client
had made it: its restrictions (``permit_mynetworks``, ``reject_unauth_destination``,
``permit_sasl_authenticated`` through ``LOGIN``) judge the real client, not mailgate. It lasts
for the rest of the connection, and Postfix checks ``smtpd_authorized_xclient_hosts`` against the
client it now believes in, so a connection serves one client and is not shared: it is kept for
the next session of the same client (the same address, name, HELO and login; the port only
changes what is logged).
"""

from __future__ import annotations

from mailgate.session import Session, Transaction

UNAVAILABLE = "[UNAVAILABLE]"
_MAX_HELO = 255
_MAX_LINE = 500


def xtext(value: str) -> str:
    """RFC 3461 xtext: ``+``, ``=``, controls, space and non-ASCII bytes as ``+XX``."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in value.encode("utf-8", "surrogateescape")
    )


def attributes(session: Session, transaction: Transaction) -> dict[str, str]:
    """The XFORWARD attributes of this client and transaction (raw, not yet encoded)."""
    ip = session.client_ip
    return {
        "NAME": session.client_name or UNAVAILABLE,
        "ADDR": (f"IPv6:{ip}" if ":" in ip else ip) or UNAVAILABLE,
        "PORT": str(session.client_port) if session.client_port else UNAVAILABLE,
        "PROTO": str(transaction.notes.get("protocol") or UNAVAILABLE),
        "HELO": session.helo[:_MAX_HELO] or UNAVAILABLE,
        "IDENT": transaction.id,
    }


def client_identity(session: Session, transaction: Transaction) -> str:
    """What a downstream's restrictions can see of a client through XCLIENT: a connection
    handed to one identity may serve any session with the same one."""
    protocol = str(transaction.notes.get("protocol") or "ESMTP").upper()
    esmtp = "ESMTP" if protocol.startswith("ESMTP") else "SMTP"
    return "\0".join(
        (session.client_ip, session.client_name, session.helo, session.auth_login, esmtp)
    )


def xclient_command(offered: str, session: Session, transaction: Transaction) -> str:
    """The one XCLIENT command for the attributes the downstream offered (``NAME ADDR PROTO
    HELO REVERSE_NAME PORT LOGIN ...``). One command, because Postfix re-checks its
    authorisation against the new client after each one."""
    wanted = set(offered.upper().split())
    ip = session.client_ip
    protocol = str(transaction.notes.get("protocol") or "ESMTP").upper()
    values = {
        "NAME": session.client_name or UNAVAILABLE,
        "ADDR": (f"IPv6:{ip}" if ":" in ip else ip) or UNAVAILABLE,
        "PORT": str(session.client_port) if session.client_port else UNAVAILABLE,
        "PROTO": "ESMTP" if protocol.startswith("ESMTP") else "SMTP",
        "HELO": session.helo[:_MAX_HELO] or UNAVAILABLE,
        "LOGIN": session.auth_login[:_MAX_HELO] or UNAVAILABLE,
    }
    pairs = [f"{name}={xtext(value)}" for name, value in values.items() if name in wanted]
    return "XCLIENT " + " ".join(pairs)


def commands(offered: str, session: Session, transaction: Transaction) -> list[str]:
    """The XFORWARD commands for the attributes the downstream offered (its EHLO parameter,
    ``NAME ADDR PROTO HELO SOURCE PORT IDENT``), split like Postfix's client does so that
    each stays well under the 512-byte command limit."""
    wanted = set(offered.upper().split())
    pairs = [
        f"{name}={xtext(value)}"
        for name, value in attributes(session, transaction).items()
        if name in wanted
    ]
    out: list[str] = []
    line = ""
    for pair in pairs:
        if line and len(line) + 1 + len(pair) > _MAX_LINE:
            out.append(line)
            line = ""
        line = f"{line} {pair}" if line else f"XFORWARD {pair}"
    if line:
        out.append(line)
    return out
