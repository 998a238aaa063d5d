"""Parsing the arguments of MAIL FROM and RCPT TO: the path and the ESMTP parameters."""

from __future__ import annotations

import re

_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e\x80-\U0010ffff]+))?\Z")
"""RFC 5321 esmtp-param: keyword, optionally ``=`` and a value of printable characters."""


def parse_path(text: str) -> tuple[str, str] | None:
    """Split ``<path> params`` into the address and the rest; None if it is malformed.

    ``<>`` gives an empty address; a source route (``<@a,@b:user@c>``) is dropped, as RFC 5321
    allows; an address without angle brackets is taken up to the first space (lenient, as
    Postfix is by default).
    """
    text = text.lstrip()
    if text.startswith("<"):
        end = _closing_bracket(text)
        if end < 0:
            return None
        path, rest = text[1:end], text[end + 1 :]
        if rest and not rest[0].isspace():
            return None
    else:
        path, _, rest = text.partition(" ")
        if not path or "<" in path or ">" in path:
            return None
    if path.startswith("@"):
        _, colon, path = path.partition(":")
        if not colon:
            return None
    if any(ord(c) < 33 or ord(c) == 127 for c in path) and not _quoted_local_part(path):
        return None
    return path, rest.strip()


def _closing_bracket(text: str) -> int:
    quoted = escaped = False
    for i, c in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
    return -1


def _quoted_local_part(path: str) -> bool:
    local, _, domain = path.rpartition("@")
    clean = all(32 <= ord(c) != 127 for c in path)
    return clean and local.startswith('"') and local.endswith('"') and " " not in domain


def parse_params(text: str) -> dict[str, str | None] | None:
    """ESMTP parameters as ``{"SIZE": "1000", "SMTPUTF8": None}``; None if one is malformed or
    given twice (RFC 5321 section 4.1.2: each keyword at most once)."""
    params: dict[str, str | None] = {}
    for word in text.split():
        match = _PARAM.match(word)
        if match is None:
            return None
        keyword = match.group(1).upper()
        if keyword in params:
            return None
        params[keyword] = match.group(2)
    return params
