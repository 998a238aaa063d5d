"""Validate an Authenticated Received Chain (RFC 8617 5.2).

Two steps. First the chain's form, from the header fields alone (no lookup): every ARC header
field has an instance ``i=`` in 1..50, each instance has exactly one ARC-Authentication-Results,
ARC-Message-Signature and ARC-Seal, the instances run 1..N without a gap, the seals' ``cv=``
say ``none`` for i=1 and ``pass`` above it (a ``fail`` anywhere ends the chain), and every
``a=`` is ``rsa-sha256``. Then the cryptography, by dkimpy (``dkim.ARC.verify``):
the newest ARC-Message-Signature and every ARC-Seal, with their keys looked up through the
dkim plugin's `KeyLookup` (the configured resolver, one deadline for the whole chain).

dkimpy checks most of the form too, but only as it goes, after key lookups, and with reasons
such as "Incomplete ARC set for instance 2"; its validator has no upper bound on the instances
(only its signer does). The first step gives each rule its own reason, bounds the instances at
50 and spends no DNS query on a chain that cannot pass.

RFC 8617 knows three chain results: ``none``, ``pass`` and ``fail``. A key lookup that times
out therefore fails the chain (the reason says the failure was temporary, and the result's
``temporary`` detail is true), as dkimpy and the other implementations do.

Everything here is synchronous: the plugin runs `validate` in a worker thread.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import dkim
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value

from mailgate.plugins.dkim.verify import MIN_RSA_BITS, KeyLookup

ChainResult = Literal["none", "pass", "fail"]

MAX_INSTANCE = 50
"""RFC 8617 4.2.1: instances run from 1 to at most 50."""

ACCEPTED_ALGORITHMS = frozenset({"rsa-sha256"})
"""The one algorithm dkimpy's ARC validator knows (``ARC_HASH_ALGORITHMS``); rsa-sha1 is out
anyway (RFC 8301)."""

AAR = "arc-authentication-results"
AMS = "arc-message-signature"
SEAL = "arc-seal"
_NAMES = {AAR: "ARC-Authentication-Results", AMS: "ARC-Message-Signature", SEAL: "ARC-Seal"}
HEADER_NAMES = frozenset(_NAMES)
"""The names of the ARC header fields, lower case: a message with none of them has no chain."""
_AAR_INSTANCE = re.compile(rb"^\s*i\s*=\s*([0-9]+)\s*;")

# dkimpy logs every failed signature at ERROR; the plugin records and logs the outcome itself.
_dkimpy_log = logging.getLogger("mailgate.plugins.arc.dkimpy")
_dkimpy_log.setLevel(logging.CRITICAL)


@dataclass(slots=True)
class ArcSet:
    """One instance of the chain, as found in the header fields and as checked."""

    instance: int
    domain: str = ""
    """The ARC-Seal's ``d=``: who sealed this set."""
    selector: str = ""
    cv: str = ""
    seal: str = "unchecked"
    """``pass`` or ``fail`` when dkimpy checked the ARC-Seal, else ``unchecked``."""
    signature: str = "unchecked"
    """The same for the ARC-Message-Signature (only the newest one must pass)."""
    aar: str = ""
    """The ARC-Authentication-Results value after ``i=N;``: what this sealer found."""

    def as_dict(self) -> dict[str, Any]:
        """The entry of ``transaction.results["arc"].details["chain"]``."""
        return {
            "instance": self.instance,
            "domain": self.domain,
            "selector": self.selector,
            "cv": self.cv,
            "result": self.seal,
            "signature": self.signature,
            "aar": self.aar,
        }


@dataclass(slots=True)
class Validation:
    """The outcome of one chain."""

    result: ChainResult
    reason: str
    sets: list[ArcSet] = field(default_factory=list)
    """Oldest (i=1) first."""
    oldest_pass: int = 0
    """The lowest instance whose ARC-Message-Signature verifies, with every newer one
    (RFC 8617 5.2 step 4); 0 when not determined."""
    temporary: bool = False
    """A key lookup failed for now (timeout, SERVFAIL): another try might pass."""

    @property
    def sealer(self) -> str:
        """The newest sealer's domain, "" without a chain."""
        return self.sets[-1].domain if self.sets else ""


class _Malformed(Exception):
    """The chain's form is wrong (RFC 8617 5.2 step 2)."""


def validate(
    data: bytes, resolver: dns.resolver.Resolver, *, timeout: float = math.inf
) -> Validation:
    """Validate the chain of `data` (a whole message, CRLF lines)."""
    try:
        arc = dkim.ARC(_spaced(data), logger=_dkimpy_log, minkey=MIN_RSA_BITS)
    except Exception as exc:  # DKIMException, and IndexError for a header block that starts
        # with a continuation line (found by the hypothesis test)
        reason = _one_line(f"{type(exc).__name__}: {exc}")
        return Validation("fail", f"message not verifiable: {reason}")
    fields = [(n.lower().decode("ascii", "replace"), v) for n, v in arc.headers]
    fields = [(n, v) for n, v in fields if n in _NAMES]
    if not fields:
        return Validation("none", "")
    try:
        sets = _form(fields)
    except _Malformed as exc:
        return Validation("fail", str(exc), _partial_sets(fields))
    lookup = KeyLookup(resolver, time.monotonic() + timeout)
    try:
        cv, checked, reason = arc.verify(dnsfunc=lookup)
    except Exception as exc:  # dkimpy's parsers let others through on hostile input
        cv, checked, reason = dkim.CV_Fail, [], f"{type(exc).__name__}: {exc}"
    return _outcome(sets, cv, checked, _one_line(str(reason)), lookup)


def _form(fields: list[tuple[str, bytes]]) -> list[ArcSet]:
    """The sets of a well-formed chain, oldest first; `_Malformed` says what is wrong."""
    found: dict[int, dict[str, list[bytes]]] = defaultdict(lambda: defaultdict(list))
    for name, value in fields:
        found[_instance(name, value)][name].append(value)
    count = max(found)
    missing = [i for i in range(1, count + 1) if i not in found]
    if missing:
        raise _Malformed(f"instances run to i={count} without i={missing[0]}")
    sets = []
    for i in range(1, count + 1):
        for name in (AAR, AMS, SEAL):
            n = len(found[i][name])
            if n != 1:
                raise _Malformed(f"instance i={i} has {n} {_NAMES[name]} fields, not one")
        sets.append(_set(i, found[i][AAR][0], found[i][AMS][0], found[i][SEAL][0]))
    return sets


def _instance(name: str, value: bytes) -> int:
    if name == AAR:
        match = _AAR_INSTANCE.match(value)
        text = match.group(1) if match else b""
    else:
        text = _tags(value).get(b"i", b"").strip()
    if not text.isdigit():
        raise _Malformed(f"an {_NAMES[name]} field has no valid i= tag")
    instance = int(text)
    if not 1 <= instance <= MAX_INSTANCE:
        raise _Malformed(f"{_NAMES[name]} i={instance} is outside 1..{MAX_INSTANCE}")
    return instance


def _set(i: int, aar: bytes, ams: bytes, seal: bytes) -> ArcSet:
    tags = _tags(seal)
    arc_set = _describe(i, aar, tags)
    cv = arc_set.cv
    if cv == "fail":
        raise _Malformed(f"ARC-Seal i={i} says cv=fail: the chain ended there")
    expected = "none" if i == 1 else "pass"
    if cv != expected:
        raise _Malformed(f"ARC-Seal i={i} says cv={cv or '(missing)'}, not {expected}")
    for name, tagged in ((SEAL, tags), (AMS, _tags(ams))):
        algorithm = tagged.get(b"a", b"").strip().decode("ascii", "replace")
        if algorithm not in ACCEPTED_ALGORITHMS:
            raise _Malformed(f"{_NAMES[name]} i={i} uses a={algorithm or '(missing)'}")
    return arc_set


def _describe(i: int, aar: bytes, seal_tags: dict[bytes, bytes]) -> ArcSet:
    def text(name: bytes) -> str:
        return seal_tags.get(name, b"").strip().decode("utf-8", "replace")

    _, _, results = aar.partition(b";")
    return ArcSet(
        instance=i,
        domain=text(b"d").lower(),
        selector=text(b"s"),
        cv=text(b"cv").lower(),
        aar=_one_line(results.decode("utf-8", "replace")),
    )


def _partial_sets(fields: list[tuple[str, bytes]]) -> list[ArcSet]:
    """What can be told of a malformed chain's seals, for the record (oldest first)."""
    sets = []
    for name, value in fields:
        if name != SEAL:
            continue
        tags = _tags(value)
        i = tags.get(b"i", b"").strip()
        sets.append(_describe(int(i) if i.isdigit() else 0, b"", tags))
    return sorted(sets, key=lambda s: s.instance)


def _outcome(
    sets: list[ArcSet], cv: Any, checked: list[dict[str, Any]], reason: str, lookup: KeyLookup
) -> Validation:
    by_instance = {s.instance: s for s in sets}
    for entry in checked:
        arc_set = by_instance.get(int(entry.get("instance", 0)))
        if arc_set is None:
            continue
        if "ams-valid" in entry:
            arc_set.signature = "pass" if entry["ams-valid"] else "fail"
        if "as-valid" in entry:
            arc_set.seal = "pass" if entry["as-valid"] else "fail"
    temporary = bool(lookup.temporary)
    if cv == dkim.CV_Pass:
        return Validation("pass", "", sets, _oldest_pass(sets))
    newest = sets[-1]
    failed_seal = next((s for s in reversed(sets) if s.seal == "fail"), None)
    if newest.signature == "fail":
        reason = f"ARC-Message-Signature i={newest.instance} ({newest.domain}) did not verify"
    elif failed_seal is not None:
        reason = f"ARC-Seal i={failed_seal.instance} ({failed_seal.domain}) did not verify"
    if temporary:
        reason = f"{reason}: key lookup failed for now ({lookup.temporary})"
    return Validation("fail", reason, sets, temporary=temporary)


def _oldest_pass(sets: list[ArcSet]) -> int:
    oldest = 0
    for arc_set in reversed(sets):
        if arc_set.signature != "pass":
            break
        oldest = arc_set.instance
    return oldest


_AMS_UNSPACED = re.compile(rb"(?im)^(arc-message-signature:)(?=\S)")


def _spaced(data: bytes) -> bytes:
    """`data` with a space after ``ARC-Message-Signature:`` where there was none: dkimpy finds
    the field by `` i=N;`` and raises IndexError without the space, which relaxed
    canonicalization (the only one ARC uses) ignores anyway."""
    head, sep, body = data.partition(b"\r\n\r\n")
    return _AMS_UNSPACED.sub(rb"\1 ", head) + sep + body


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(parse_tag_value(value))
    except (InvalidTagValueList, ValueError):
        return {}


def _one_line(text: str) -> str:
    return " ".join(text.split())
