"""Postfix's XFORWARD: tell the downstream who the original client was (XFORWARD_README).

Postfix then logs and checks (``smtpd_client_restrictions``, its own ``Received:``) the
forwarded client instead of mailgate. The attributes last for one transaction, so they are
sent before every MAIL FROM, also on a pooled connection and after RSET.
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
