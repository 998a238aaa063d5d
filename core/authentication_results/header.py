"""Writing the Authentication-Results header value (RFC 8601 section 2.2), folded.

One `AuthResult` per check (``spf=pass smtp.mailfrom=example.com``); `header_value` writes
them after the authserv-id, one per line::

    Authentication-Results: mx.example.net;
            iprev=pass policy.iprev=192.0.2.1 (mail.example.com);
            spf=pass smtp.mailfrom=example.com;
            dkim=fail reason="signature did not verify" header.d=example.com
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from mailgate.authentication_results import syntax

HEADER = "Authentication-Results"
ARC_HEADER = "ARC-Authentication-Results"

WIDTH = 78
"""Lines are folded to this many characters where they can be (RFC 5322 2.1.1)."""

_FIRST_LINE_TAKEN = len(HEADER) + 2
"""``Authentication-Results: `` before the value on its first line."""


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One ``resinfo``: a method's result, an optional reason, and properties.

    `properties` maps ``ptype.property`` (``smtp.mailfrom``, ``header.d``, ``policy.iprev``)
    to its value; `comment` is written after them, in parentheses (``iprev`` puts the
    confirmed name there).
    """

    method: str
    result: str
    reason: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    comment: str = ""

    def problem(self) -> str:
        """Why this cannot be written (empty if it can): names must be RFC 8601 keywords."""
        if not syntax.is_keyword(self.method) or not syntax.is_keyword(self.result):
            return f"method and result must be keywords: {self.method!r}={self.result!r}"
        for key in self.properties:
            if not _is_property_name(key):
                return f"property {key!r} is not ptype.property"
        return ""

    def text(self) -> str:
        """The resinfo as written, without the ``;`` before it."""
        parts = [f"{self.method}={self.result}"]
        if self.reason:
            parts.append(f"reason={syntax.quoted(self.reason)}")
        parts += [f"{key}={syntax.pvalue(v)}" for key, v in self.properties.items()]
        if self.comment:
            parts.append(syntax.comment(self.comment))
        return " ".join(parts)


@functools.lru_cache(maxsize=256)
def _is_property_name(key: str) -> bool:
    """True for ``ptype.property`` made of two keywords (the same few names on every message)."""
    ptype, dot, prop = key.partition(".")
    return bool(dot) and syntax.is_keyword(ptype) and syntax.is_keyword(prop)


def header_value(authserv_id: str, results: list[AuthResult]) -> str:
    """The header's value (without the name and the colon): ``authserv-id; none`` when
    nothing was checked. Lines are joined by CRLF and folded at `WIDTH` where a space
    allows it. Raises `ValueError` for a result whose `AuthResult.problem` is not empty."""
    for result in results:
        problem = result.problem()
        if problem:
            raise ValueError(problem)
    return checked_header_value(authserv_id, results)


def checked_header_value(authserv_id: str, results: list[AuthResult]) -> str:
    """`header_value` for results already checked (each `AuthResult.problem` empty), as
    `collect.results_of` gives them."""
    head = syntax.value(authserv_id)
    if not results:
        return fold(f"{head}; none", _FIRST_LINE_TAKEN)
    lines = [f"{head};"]
    lines += [r.text() + ";" for r in results[:-1]]
    lines.append(results[-1].text())
    folded = [fold(lines[0], _FIRST_LINE_TAKEN)]
    folded += ["\t" + fold(line, 8) for line in lines[1:]]
    return "\r\n".join(folded)


def fold(line: str, taken: int) -> str:
    """`line` folded at `WIDTH` (it starts `taken` columns in): a CRLF goes before the first
    space of a run of spaces, never elsewhere, so unfolding (taking the CRLFs out) gives
    `line` back, even inside quoted strings and comments. A line with no such space stays
    long."""
    if taken + len(line) <= WIDTH:
        return line
    pieces: list[str] = []
    start, room = 0, WIDTH - taken
    while start + room < len(line):
        # The first character past the width is at start + room; fold at the last fold
        # point before it (after start), or, if there is none, at the first one after it.
        over = start + room
        point = _last_fold_point(line, start, over)
        if point < 0:
            point = _next_fold_point(line, max(start, over))
            if point < 0:
                break
        pieces.append(line[start:point])
        start, room = point, WIDTH
    pieces.append(line[start:])
    return "\r\n".join(pieces)


def _last_fold_point(line: str, start: int, over: int) -> int:
    """The last space after `start`, at `over` at most, that begins a run of spaces; -1."""
    if over <= start:  # (a first line that starts past the width)
        return -1
    space = line.rfind(" ", start + 1, over + 1)
    while space > start and line[space - 1] == " ":
        space -= 1
    return space if space > start else -1


def _next_fold_point(line: str, after: int) -> int:
    """The first space after `after` that begins a run of spaces; -1."""
    space = line.find(" ", after + 1)
    while space > 0 and line[space - 1] == " ":
        space = line.find(" ", space + 1)
    return space
