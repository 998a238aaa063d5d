"""Address lookups of the `rewrite` plugin: the maps, subaddresses and the catch-all.

Pure functions over strings, so the lookup order can be tested without mail. The order is
Postfix's (canonical and virtual maps): the address as given, then without its subaddress
(``bob+tag@x`` -> ``bob@x``), then its domain (``@x``). One pass: a rewritten address is not
looked up again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_LOCAL = re.compile(rf"^{_ATEXT}(\.{_ATEXT})*$")
_LABEL = (
    r"([A-Za-z0-9\u0080-\U0010ffff]([A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?)"
)
_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$|^\[[0-9A-Fa-f:.]+\]$")


def is_domain(text: str) -> bool:
    """True for a domain name such as ``example.com`` (or an address literal ``[192.0.2.1]``)."""
    return len(text) <= 255 and _DOMAIN.match(text) is not None


def is_address(text: str) -> bool:
    """True for a full address ``local@domain`` with a dot-atom local part."""
    local, at, domain = text.rpartition("@")
    return bool(at) and len(local) <= 64 and _LOCAL.match(local) is not None and is_domain(domain)


def is_domain_key(text: str) -> bool:
    """True for ``@domain``: a map key or value that stands for a whole domain."""
    return text.startswith("@") and is_domain(text[1:])


def is_map_entry(text: str) -> bool:
    """True for what a map may hold as a key or a value: an address or ``@domain``."""
    return is_address(text) or is_domain_key(text)


def split_subaddress(local: str, delimiters: str) -> tuple[str, str]:
    """``("bob", "+tag")`` for ``bob+tag`` when ``+`` is a delimiter; ``(local, "")`` otherwise.

    Each character of `delimiters` is one delimiter (as Postfix's ``recipient_delimiter``);
    the first one found splits. A local part that starts with a delimiter has no subaddress.
    """
    positions = [i for i in (local.find(d) for d in delimiters) if i > 0]
    if not positions:
        return local, ""
    cut = min(positions)
    return local[:cut], local[cut:]


@dataclass(frozen=True, slots=True)
class Lookup:
    """How addresses are compared: the subaddress delimiters and the case of local parts."""

    delimiters: str = "+"
    case_insensitive_local: bool = False

    def key(self, address: str) -> str:
        """The form of `address` (or ``@domain``) used as a dictionary key."""
        local, _, domain = address.rpartition("@")
        if self.case_insensitive_local:
            local = local.lower()
        return f"{local}@{domain.lower()}"


class AddressMap:
    """One map (``sender``, ``recipients`` or ``catch_all``): keys to lists of targets."""

    def __init__(self, table: Mapping[str, str | Sequence[str]], lookup: Lookup) -> None:
        self.lookup = lookup
        self.entries: dict[str, tuple[str, ...]] = {
            lookup.key(k): (v,) if isinstance(v, str) else tuple(v) for k, v in table.items()
        }

    def __bool__(self) -> bool:
        return bool(self.entries)

    def find(self, address: str) -> tuple[tuple[str, ...], bool] | None:
        """The targets of `address`, and whether they matched without its subaddress.

        Tried in order: ``bob+tag@x``, ``bob@x``, ``@x``; None when nothing matches.
        """
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return None
        base, ext = split_subaddress(local, self.lookup.delimiters)
        tries = [(f"{local}@{domain}", False)]
        if ext:
            tries.append((f"{base}@{domain}", True))
        tries.append((f"@{domain}", True))
        for candidate, unmatched_ext in tries:
            targets = self.entries.get(self.lookup.key(candidate))
            if targets is not None:
                return targets, unmatched_ext
        return None


def apply_target(target: str, local: str, ext: str) -> str:
    """The address `target` makes of an address whose local part is `local` (`ext` kept).

    ``@domain`` keeps the local part; a full address gets `ext` (the subaddress the lookup
    did not match, or "") added to its own local part.
    """
    if target.startswith("@"):
        return f"{local}{target}"
    tlocal, _, tdomain = target.rpartition("@")
    return f"{tlocal}{ext}@{tdomain}"


def rewrite(address: str, table: AddressMap, *, strip: bool) -> list[str] | None:
    """What `address` becomes through `table` (None: no entry matched).

    With `strip`, the subaddress is dropped from the result (``bob+tag`` -> ``bob``), whether
    or not an entry matched; a full address in the map is used as written.
    """
    local, _, domain = address.rpartition("@")
    base, ext = split_subaddress(local, table.lookup.delimiters)
    kept_local, kept_ext = (base, "") if strip else (local, ext)
    found = table.find(address)
    if found is None:
        return [f"{base}@{domain}"] if strip and ext else None
    targets, unmatched_ext = found
    return _unique(apply_target(t, kept_local, kept_ext if unmatched_ext else "") for t in targets)


def _unique(addresses: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for a in addresses:
        if a.lower() not in seen:
            seen.add(a.lower())
            out.append(a)
    return out


@dataclass(slots=True)
class CatchAll:
    """Domains whose unknown recipients go to one address."""

    targets: AddressMap
    """``@domain`` to the catch-all address."""
    known: frozenset[str]
    """The domain's real recipients, as `Lookup.key` forms, without subaddresses."""

    def target(self, address: str) -> str | None:
        """The catch-all address for `address`, or None (a known recipient, or no catch-all)."""
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return None
        found = self.targets.entries.get(self.targets.lookup.key(f"@{domain}"))
        if found is None:
            return None
        base, _ = split_subaddress(local, self.targets.lookup.delimiters)
        lookup = self.targets.lookup
        if lookup.key(address) in self.known or lookup.key(f"{base}@{domain}") in self.known:
            return None
        return found[0]


def xtext(text: str) -> str:
    """RFC 3461 xtext: ``+`` and ``=``, and bytes outside ``!``..``~``, as ``+XX``."""
    return "".join(f"+{ord(c):02X}" if c in "+=" or not 33 <= ord(c) <= 126 else c for c in text)


def with_orcpt(params: Sequence[str], original: str) -> tuple[str, ...]:
    """`params`, with ``ORCPT=rfc822;<original>`` added when there is none (RFC 3461 4.2).

    Not added for a non-ASCII original: that needs the ``utf-8`` address type of RFC 6533.
    """
    if any(p.upper().startswith("ORCPT=") for p in params) or not original.isascii():
        return tuple(params)
    return (*params, f"ORCPT=rfc822;{xtext(original)}")
