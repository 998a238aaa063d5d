"""What each side said about a message, reduced to comparable outcomes per check.

The daemons' Authentication-Results headers are read with a small reader of its own (not
mailgate's parser, which is part of what is being checked): resinfos split at ``;`` outside
quotes and comments, comments kept aside (opendmarc writes the policy in one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mailgate import Transaction


@dataclass(frozen=True, slots=True)
class ResInfo:
    """One ``method=result`` of an Authentication-Results header."""

    method: str
    result: str
    properties: dict[str, str] = field(default_factory=dict)
    comments: tuple[str, ...] = ()


def split_header(value: str) -> tuple[str, list[ResInfo]]:
    """(authserv-id, resinfos) of an Authentication-Results value."""
    parts: list[tuple[str, list[str]]] = []
    text, comments, depth, quoted = "", [], 0, False
    comment = ""
    for char in value:
        if depth:
            if char == ")":
                depth -= 1
                if not depth:
                    comments.append(comment.strip())
                    comment = ""
                    continue
            elif char == "(":
                depth += 1
            comment += char
        elif quoted:
            text += char
            quoted = char != '"'
        elif char == "(":
            depth = 1
        elif char == '"':
            text += char
            quoted = True
        elif char == ";":
            parts.append((text, comments))
            text, comments = "", []
        else:
            text += char
    parts.append((text, comments))
    authserv_id = parts[0][0].split()[0] if parts[0][0].split() else ""
    found = []
    for text, notes in parts[1:]:
        words = re.findall(r'[^\s=]+="[^"]*"|[^\s=]+=\S+|\S+', text)
        if not words or "=" not in words[0]:
            continue
        method, _, result = words[0].partition("=")
        props = {}
        for word in words[1:]:
            name, _, val = word.partition("=")
            props[name.lower()] = val.strip('"')
        found.append(ResInfo(method.lower(), result.lower(), props, tuple(notes)))
    return authserv_id, found


def resinfos(headers: list[str], authserv_id: str) -> list[ResInfo]:
    """Every resinfo of the headers written by `authserv_id`."""
    out: list[ResInfo] = []
    for value in headers:
        who, found = split_header(value)
        if who.lower() == authserv_id.lower():
            out.extend(found)
    return out


def dkim_outcome(entries: list[tuple[str, str, str]]) -> str:
    """Signatures as ``d=result`` in header.b order (result per signature; "none" if none)."""
    if not entries:
        return "none"
    return " ".join(f"{d}={r}" for d, b, r in sorted(entries, key=lambda e: (e[0], e[1])))


def dkim_of_daemon(found: list[ResInfo]) -> str:
    entries = [
        (r.properties.get("header.d", "?"), r.properties.get("header.b", "")[:8], r.result)
        for r in found
        if r.method == "dkim" and r.result != "none"
    ]
    return dkim_outcome(entries)


def dkim_of_mailgate(tx: Transaction) -> str:
    details: dict[str, Any] = tx.results["dkim"].details
    entries = [
        (e["properties"].get("header.d", "?"), e["properties"].get("header.b", "")[:8], e["result"])
        for e in details.get("auth_results", [])
    ]
    return dkim_outcome(entries)


def first(found: list[ResInfo], method: str) -> ResInfo | None:
    return next((r for r in found if r.method == method), None)


def simple_of_daemon(found: list[ResInfo], method: str) -> str:
    """The result of `method` ("none" when the daemon wrote nothing for it)."""
    info = first(found, method)
    return info.result if info else "none"


def dmarc_of_opendmarc(found: list[ResInfo]) -> str:
    """opendmarc's ``dmarc=RESULT (p=POLICY ...)`` as ``RESULT p=POLICY`` for a failure."""
    info = first(found, "dmarc")
    if info is None:
        return "none"
    if info.result != "fail":
        return info.result
    policy = next((m.group(1) for c in info.comments if (m := re.search(r"\bp=(\w+)", c))), "?")
    return f"fail p={policy}"


def dmarc_of_rspamd(found: list[ResInfo]) -> str:
    """rspamd's ``dmarc=RESULT ... (policy=POLICY)`` as ``RESULT p=POLICY`` for a failure."""
    info = first(found, "dmarc")
    if info is None:
        return "none"
    if info.result != "fail":
        return info.result
    policy = next(
        (m.group(1) for c in info.comments if (m := re.search(r"\bpolicy=(\w+)", c))), "?"
    )
    return f"fail p={policy}"


def dmarc_of_mailgate(tx: Transaction) -> str:
    found = tx.results["dmarc"]
    if found.result != "fail":
        return found.result
    return f"fail p={found.details.get('policy') or 'none'}"


def arc_of_rspamd(found: list[ResInfo]) -> str:
    """rspamd's ``arc=`` result; it says ``reject`` where RFC 8617 says ``fail``."""
    result = simple_of_daemon(found, "arc")
    return "fail" if result == "reject" else result
