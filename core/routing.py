"""Sender-specified routing: recipient addresses that a downstream may route elsewhere.

Relay control decides by the domain after the last ``@``, but an MTA behind mailgate may read
more routing out of the address than that. Postfix, by default (``allow_percent_hack``,
``swap_bangpath``, ``resolve_dequoted_address``), strips a domain it delivers for and then
resolves what is left: ``victim%evil.test@mx.example.org`` and ``evil.test!victim@mx.example.org``
become ``victim@evil.test``, and so does the quoted ``"victim@evil.test"@example.org``. Other
MTAs also read RFC 822 comments and backslash escapes. Postfix refuses such addresses from
untrusted clients (``allow_untrusted_routing = no``); `routing_reason` lets relay control do the
same, before the address reaches a downstream that trusts mailgate.
"""

from __future__ import annotations

import re

ROUTING_OPERATORS = "@%!"
"""Characters that route when they appear in a local part: a second ``@``, the percent hack
(``user%host``) and a bang path (``host!user``)."""

_SPECIALS = frozenset('()<>,;:\\[]"')
"""RFC 5322 specials that a lenient parser reads as syntax (comments, groups, escapes)."""

_LABEL = r"(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]*"
_LABEL += r"[A-Za-z0-9\u0080-\U0010ffff])?)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?\Z")
_ADDRESS_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]\Z")


def routing_reason(address: str) -> str | None:
    """Why `address` carries sender-specified routing, or None if it does not.

    The local part is read the way a lenient MTA reads it: a quoted string is opened and
    backslash escapes are undone before looking for ``@``, ``%`` and ``!``. A local part with
    unquoted specials (a comment, an escape, an unbalanced quote) or a domain that is not a
    host name or an address literal is routing too: its meaning depends on the parser.
    """
    if "@" not in address:
        local, domain = address, ""
    else:
        local, _, domain = address.rpartition("@")
    if domain and not valid_domain(domain):
        return "domain is not a host name or address literal"
    opened = _open_local_part(local)
    if opened is None:
        return "local part has special characters outside a quoted string"
    if "@" in opened:
        return "second @ in the local part"
    if "%" in opened:
        return "percent hack (user%host)"
    if "!" in opened:
        return "bang path (host!user)"
    return None


def valid_domain(domain: str) -> bool:
    """True for a host name (LDH labels, UTF-8 allowed, one trailing dot) or ``[literal]``."""
    if len(domain) > 255:
        return False
    return bool(_DOMAIN.match(domain) or _ADDRESS_LITERAL.match(domain))


def _open_local_part(local: str) -> str | None:
    """The local part as an MTA sees it once quotes are opened; None if it is not one
    quoted string nor free of specials."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        inner = local[1:-1]
        out = []
        escaped = False
        for c in inner:
            if escaped:
                out.append(c)
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                return None
            else:
                out.append(c)
        return None if escaped else "".join(out)
    if any(c in _SPECIALS for c in local):
        return None
    return local
