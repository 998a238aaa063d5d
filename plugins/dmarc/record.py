"""The DMARC policy record (RFC 7489 6.3, with ``np`` and ``t`` from DMARCbis): parse one TXT.

Written here rather than taken from the ``dmarc`` package: see ``docs/plugins/dmarc.md``.
The rules of RFC 7489 6.3 and 6.6.3 that shape this parser:

- a record is one whose text starts with ``v=DMARC1`` (the only case-sensitive part); other TXT
  records at ``_dmarc.<domain>`` are not DMARC records and are discarded before counting;
- ``p`` is required. A record without a valid ``p`` (or with an invalid ``sp``) is treated as
  ``p=none`` when it has a ``rua`` with a URI, and is otherwise no policy at all (step 6);
- a syntax error in any other tag is discarded in favour of that tag's default;
- unknown tags are ignored; of a tag given twice, the first counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["none", "quarantine", "reject"]
"""What a domain asks receivers to do with mail that fails DMARC."""

Alignment = Literal["r", "s"]
"""Relaxed (same organizational domain) or strict (same domain) identifier alignment."""

POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")
_ALIGNMENTS: tuple[Alignment, ...] = ("r", "s")
_VERSION = re.compile(r"v\s*=\s*DMARC1\s*(;|$)")
_TAG = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\s*=(.*)", re.DOTALL)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


class RecordError(ValueError):
    """A DMARC record (it starts with ``v=DMARC1``) that gives no policy; the message says why."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """One parsed record, defaults filled in (``sp`` and ``np`` stay None when not given)."""

    p: Policy
    sp: Policy | None = None
    np: Policy | None = None
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    pct: int = 100
    testing: bool = False
    """``t=y`` (DMARCbis): the domain is testing; failures get the next policy down."""
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    ri: int = 86400
    notes: tuple[str, ...] = field(default=(), compare=False)
    """Tag values that were discarded for defaults (``"adkim=x: not r or s"``), for the log."""

    @property
    def sampling_pct(self) -> int:
        """The percentage of failing mail the policy applies to: 0 under ``t=y``."""
        return 0 if self.testing else self.pct


def is_dmarc(text: str) -> bool:
    """True if the TXT `text` is a DMARC record (it starts with ``v=DMARC1``)."""
    return _VERSION.match(text.lstrip()) is not None


def parse_record(text: str) -> DmarcRecord:
    """Parse a TXT record that `is_dmarc`; raise `RecordError` when it sets no policy."""
    if not is_dmarc(text):
        raise RecordError("does not start with v=DMARC1")
    tags = _tags(text)
    notes: list[str] = []
    p = _policy(tags, "p", notes)
    sp = _policy(tags, "sp", notes)
    if p is None or ("sp" in tags and sp is None):
        rua = _uris(tags.get("rua", ""))
        why = "no valid p tag" if p is None else "an invalid sp tag"
        if not rua:
            raise RecordError(f"{why} and no rua")
        notes.append(f"{why}: treated as p=none (it has a rua)")
        p, sp = "none", None
    return DmarcRecord(
        p=p,
        sp=sp,
        np=_policy(tags, "np", notes),
        adkim=_alignment(tags, "adkim", notes),
        aspf=_alignment(tags, "aspf", notes),
        pct=_number(tags, "pct", 100, 0, 100, notes),
        testing=_flag(tags, "t", notes),
        rua=_uris(tags.get("rua", "")),
        ruf=_uris(tags.get("ruf", "")),
        fo=tags.get("fo", "0") or "0",
        ri=_number(tags, "ri", 86400, 0, 2**32 - 1, notes),
        notes=tuple(notes),
    )


def _tags(text: str) -> dict[str, str]:
    """The tags after ``v``, names lower-cased, values stripped; the first of a name counts."""
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        match = _TAG.fullmatch(part.strip())
        if match is None:
            continue
        name = match.group(1).lower()
        tags.setdefault(name, match.group(2).strip())
    return tags


def _policy(tags: dict[str, str], name: str, notes: list[str]) -> Policy | None:
    value = tags.get(name)
    if value is None:
        return None
    for policy in POLICIES:
        if value.lower() == policy:
            return policy
    notes.append(f"{name}={value}: not none, quarantine or reject")
    return None


def _alignment(tags: dict[str, str], name: str, notes: list[str]) -> Alignment:
    value = tags.get(name, "r").lower()
    for mode in _ALIGNMENTS:
        if value == mode:
            return mode
    notes.append(f"{name}={value}: not r or s, r used")
    return "r"


def _number(
    tags: dict[str, str], name: str, default: int, low: int, high: int, notes: list[str]
) -> int:
    value = tags.get(name)
    if value is None:
        return default
    if value.isascii() and value.isdigit() and low <= int(value) <= high:
        return int(value)
    notes.append(f"{name}={value}: not a number from {low} to {high}, {default} used")
    return default


def _flag(tags: dict[str, str], name: str, notes: list[str]) -> bool:
    value = tags.get(name, "n").lower()
    if value not in ("y", "n"):
        notes.append(f"{name}={value}: not y or n, n used")
    return value == "y"


def _uris(value: str) -> tuple[str, ...]:
    """The syntactically valid URIs of a ``rua``/``ruf`` list (each may end in ``!size``)."""
    uris = (u.strip() for u in value.split(","))
    return tuple(u for u in uris if _URI.fullmatch(u))
