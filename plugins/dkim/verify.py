"""Verify every DKIM-Signature of a message (RFC 6376; RFC 8301 key sizes; RFC 8463 Ed25519).

A signature that verifies is found by `fast.verifies`; every other one is checked again by
dkimpy, one signature per call (``DKIM.verify(idx)``), which says why it failed. This module
calls them for each signature in turn, answers their key lookups with the configured resolver
(`KeyLookup`) and sorts each outcome into the results of RFC 8601: dkimpy itself only says
True or False, so a missing key, a revoked key, a DNS timeout and a broken signature would
otherwise look alike.

Everything here is synchronous: the plugin runs `verify_message` in a worker thread.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import dkim
import dns.exception
import dns.resolver
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

import mailgate.plugins.dkim.speedups  # noqa: F401  (faster RSA, cached keys in dkimpy)
from mailgate.dns import CacheMiss, cached_answer, txt_strings
from mailgate.plugins.dkim.canonical import split_message
from mailgate.plugins.dkim.fast import BodyHashes, tag_list, verifies

SignatureOutcome = Literal["pass", "fail", "neutral", "temperror", "permerror", "policy"]

WORST_FIRST: tuple[SignatureOutcome, ...] = ("temperror", "fail", "policy", "permerror", "neutral")
"""Which failure speaks for the message when no signature passed: a temperror first (a later
try may pass, so nothing final can be said), then a signature that did not verify, one that
verified but is not acceptable, a broken signature or key, and last a signer in testing mode."""

MIN_RSA_BITS = 1024
"""RFC 8301 3.2: verifiers must not accept signatures made with shorter RSA keys."""

ACCEPTED_ALGORITHMS = frozenset({"rsa-sha256", "ed25519-sha256"})

# dkimpy logs every refused key at ERROR; the plugin records and logs each outcome itself.
_dkimpy_log = logging.getLogger("mailgate.plugins.dkim.dkimpy")
_dkimpy_log.setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """The outcome of one DKIM-Signature header, with what identifies it."""

    result: SignatureOutcome
    reason: str
    domain: str
    identity: str
    selector: str
    algorithm: str
    b: str
    """The first 8 characters of ``b=`` (RFC 6008 ``header.b``)."""

    def auth_result(self) -> dict[str, Any]:
        """The entry of ``transaction.results["dkim"].details["auth_results"]``."""
        return {
            "method": "dkim",
            "result": self.result,
            "reason": self.reason,
            "properties": {
                "header.d": self.domain,
                "header.i": self.identity,
                "header.s": self.selector,
                "header.a": self.algorithm,
                "header.b": self.b,
            },
        }


def overall(results: list[SignatureResult]) -> SignatureResult | None:
    """The signature that speaks for the message: the first that passed, else the worst
    failure by `WORST_FIRST`; None when there is no signature."""
    for r in results:
        if r.result == "pass":
            return r
    if not results:
        return None
    return min(results, key=lambda r: WORST_FIRST.index(r.result))


class KeyLookup:
    """dkimpy's ``dnsfunc`` for one signature: asks the configured resolver and remembers what
    happened, so a timeout (temperror) and a missing key (permerror) stay apart. Asked again
    (dkimpy after the fast check), it gives the same answer without asking again.

    With `cache_only`, it answers from the shared DNS cache alone, and raises `CacheMiss` (and
    sets `missed`) when the answer is not there."""

    def __init__(
        self,
        resolver: dns.resolver.Resolver,
        deadline: float = math.inf,
        *,
        cache_only: bool = False,
    ) -> None:
        self.resolver = resolver
        self.deadline = deadline
        self.cache_only = cache_only
        self.missed = False
        self.asked = False
        self.record: bytes | None = None
        self.missing = False
        self.temporary = ""
        self.bad_name = ""
        self._answered: dict[bytes, bytes | dkim.DnsTimeoutError | None] = {}

    def __call__(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        """The TXT record at `name` (``selector._domainkey.domain.``), or None if there is none."""
        if name in self._answered:
            answer = self._answered[name]
            if isinstance(answer, dkim.DnsTimeoutError):
                raise answer
            return answer
        try:
            answer = self._ask(name)
        except dkim.DnsTimeoutError as exc:
            self._answered[name] = exc
            raise
        self._answered[name] = answer
        return answer

    def _ask(self, name: bytes) -> bytes | None:
        self.asked = True
        qname = name.decode("utf-8", "replace")
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.temporary = "verify_timeout reached before this lookup"
            raise dkim.DnsTimeoutError(self.temporary)
        try:
            if self.cache_only:
                answer = self._cached(qname)
            else:
                lifetime = min(left, self.resolver.lifetime)
                answer = self.resolver.resolve(qname, "TXT", search=False, lifetime=lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self.missing = True
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            # NoNameservers: every server answered SERVFAIL/REFUSED or could not be reached.
            self.temporary = _one_line(str(exc))
            raise dkim.DnsTimeoutError(self.temporary) from exc
        except dns.exception.DNSException as exc:  # a name that cannot be a DNS name
            self.bad_name = _one_line(str(exc))
            return None
        self.record = _key_record(answer)
        return self.record

    def _cached(self, qname: str) -> dns.resolver.Answer:
        try:
            return cached_answer(self.resolver, qname, "TXT")
        except CacheMiss:
            self.missed = True
            raise


def verify_message(
    data: bytes,
    resolver: dns.resolver.Resolver,
    *,
    max_signatures: int = 10,
    unsigned_body: Literal["pass", "policy"] = "policy",
    timeout: float = math.inf,
    now: float | None = None,
    cache_only: bool = False,
) -> list[SignatureResult]:
    """Verify each DKIM-Signature of `data` (a whole message, CRLF lines), top to bottom.

    The key lookups of all signatures together may take `timeout` seconds; a signature whose
    lookup finds no time left is a temperror. With `cache_only`, the keys come from the shared
    DNS cache alone, and a key that is not there raises `CacheMiss` (nothing is recorded).
    """
    deadline = time.monotonic() + timeout
    split = split_message(data)
    if split is None:  # an unusual header block: dkimpy parses it (or says why it cannot)
        try:
            checker = _Checker(data, dkim.DKIM(data, logger=_dkimpy_log, minkey=MIN_RSA_BITS))
        except dkim.DKIMException as exc:  # a header block dkimpy cannot split into fields
            reason = f"message not verifiable: {_one_line(str(exc))}"
            return [_result(_tags(v), "permerror", reason) for v in _raw_signatures(data)]
        fields, body = checker.dkim.headers, checker.dkim.body
    else:
        fields, body = split
        checker = _Checker(data)
    signatures = [f for f in fields if f[0].lower() == b"dkim-signature"]
    bodies = BodyHashes(body)
    results = []
    for idx, signature in enumerate(signatures):
        tags = _tags(signature[1])
        if idx >= max_signatures:
            reason = f"not verified: more than {max_signatures} signatures"
            results.append(_result(tags, "policy", reason))
            continue
        refused = _refused_before_lookup(tags, time.time() if now is None else now)
        if refused is not None:
            results.append(_result(tags, *refused))
            continue
        lookup = KeyLookup(resolver, deadline, cache_only=cache_only)
        if tags and verifies(fields, signature, bodies, lookup, MIN_RSA_BITS, tags):
            verified, error = True, ""
        else:
            verified, error = checker.verify(idx, lookup)
        if lookup.missed:
            raise CacheMiss(f"no cached key for signature {idx + 1}")
        results.append(_classify(verified, error, tags, lookup, bodies, unsigned_body))
    return results


class _Checker:
    """dkimpy's verifier of one message, made when a signature first needs it."""

    def __init__(self, data: bytes, parsed: dkim.DKIM | None = None) -> None:
        self.data = data
        self._dkim = parsed

    @property
    def dkim(self) -> dkim.DKIM:
        if self._dkim is None:
            self._dkim = dkim.DKIM(self.data, logger=_dkimpy_log, minkey=MIN_RSA_BITS)
        return self._dkim

    def verify(self, idx: int, lookup: KeyLookup) -> tuple[bool, str]:
        """dkimpy's answer for signature `idx`, and its error text."""
        try:
            return bool(self.dkim.verify(idx, dnsfunc=lookup)), ""
        except dkim.DKIMException as exc:
            return False, _one_line(str(exc))
        except Exception as exc:  # dkimpy's parsers let others through on hostile input
            return False, f"{type(exc).__name__}: {_one_line(str(exc))}"


def _classify(
    verified: bool,
    error: str,
    tags: dict[bytes, bytes],
    lookup: KeyLookup,
    bodies: BodyHashes,
    unsigned_body: str,
) -> SignatureResult:
    """The RFC 8601 result of one signature, from the verification and what the lookup saw."""
    key = _key_tags(lookup.record)
    flags = key.get(b"t", b"").replace(b" ", b"").split(b":")
    testing = b"y" in flags
    refusal = _key_refuses(key, flags, tags) if lookup.record is not None else ""
    result: SignatureOutcome
    if refusal:
        result, reason = "permerror", refusal
    elif verified:
        result, reason = _after_pass(bodies, tags, unsigned_body)
    else:
        result, reason = _failure(lookup, key, tags, error)
    if testing and result != "temperror":
        # RFC 6376 3.6.1: a domain testing DKIM asks to be treated as if it had not signed.
        result = "neutral" if result != "pass" else result
        reason = "; ".join(filter(None, ["key in testing mode (t=y)", reason]))
    return _result(tags, result, reason)


def _refused_before_lookup(
    tags: dict[bytes, bytes], now: float
) -> tuple[SignatureOutcome, str] | None:
    """What can be said from the signature alone, before any DNS query."""
    if not tags:
        return "permerror", "malformed signature (not a tag=value list)"
    algorithm = tags.get(b"a", b"").decode("ascii", "replace")
    if algorithm == "rsa-sha1":
        return "policy", "rsa-sha1 is not accepted (RFC 8301)"
    expiry = tags.get(b"x", b"").strip()
    if expiry.isdigit() and int(expiry) < now:
        return "policy", f"signature expired (x={int(expiry)})"
    return None


def _key_refuses(key: dict[bytes, bytes], flags: list[bytes], tags: dict[bytes, bytes]) -> str:
    """What the key record forbids about this signature (RFC 6376 3.6.1), or ""."""
    hashes = key.get(b"h")
    algorithm = tags.get(b"a", b"").strip()
    if hashes is not None and algorithm.partition(b"-")[2] not in hashes.replace(b" ", b"").split(
        b":"
    ):
        return f"key allows h={hashes.decode('ascii', 'replace')} only"
    identity = tags.get(b"i", b"").strip()
    domain = tags.get(b"d", b"").strip()
    if b"s" in flags and identity and identity.rpartition(b"@")[2].lower() != domain.lower():
        return "key is strict (t=s): i= must be in d= itself, not a subdomain"
    return ""


def _after_pass(
    bodies: BodyHashes, tags: dict[bytes, bytes], unsigned_body: str
) -> tuple[SignatureOutcome, str]:
    """A signature that verified: is all of the body under it (``l=``)?"""
    length = tags.get(b"l", b"").strip()
    if not length.isdigit():
        return "pass", ""
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return "pass", ""
    body = len(bodies.canonical(policy.body_algorithm.name.decode()))
    extra = body - int(length)
    if extra <= 0:
        return "pass", ""
    reason = f"{extra} bytes of the body follow the signed part (l={int(length)})"
    return ("policy", reason) if unsigned_body == "policy" else ("pass", reason)


def _failure(
    lookup: KeyLookup, key: dict[bytes, bytes], tags: dict[bytes, bytes], error: str
) -> tuple[SignatureOutcome, str]:
    """Why a signature did not verify, as one of RFC 8601's results."""
    if lookup.temporary:
        return "temperror", f"key unavailable: {lookup.temporary}"
    if not lookup.asked:
        return "permerror", f"malformed signature: {error or 'unreadable'}"
    if lookup.bad_name:
        return "permerror", f"no key for signature: {lookup.bad_name}"
    if lookup.missing or lookup.record is None:
        return "permerror", "no key for signature"
    if key.get(b"p", b"x").strip() == b"":
        return "permerror", "key revoked"
    match = re.match(r"public key too small: (\d+)", error)
    if match:
        return "fail", f"key too small: {match.group(1)} bits (RFC 8301 requires {MIN_RSA_BITS})"
    problem = _key_problem(lookup.record, key, tags)
    if problem:
        return "permerror", problem
    if error.startswith("body hash mismatch"):
        return "fail", "body hash did not verify"
    if error:
        return "fail", error
    return "fail", "signature did not verify"


def _key_problem(record: bytes, key: dict[bytes, bytes], tags: dict[bytes, bytes]) -> str:
    """What is wrong with the key record for this signature, or ""."""
    if not key:
        return "bad key record (not a tag=value list)"
    try:
        dkim.evaluate_pk(b"", record)
    except dkim.DKIMException as exc:
        return f"bad key record: {_one_line(str(exc))}"
    except Exception as exc:  # dkimpy's key parsers raise bare errors on some garbage
        return f"bad key record: {type(exc).__name__}"
    kind = key.get(b"k", b"rsa").strip().decode("ascii", "replace")
    algorithm = tags.get(b"a", b"").decode("ascii", "replace")
    if not algorithm.startswith(f"{kind}-"):
        return f"key type {kind} does not match a={algorithm}"
    return ""


@functools.lru_cache(maxsize=1024)
def _key_record(answer: dns.resolver.Answer) -> bytes:
    """The key record of a TXT answer, remembered by the answer itself (the same cached answer
    comes with every message of a signer until its TTL runs out, and then the same bytes object
    finds dkimpy's parsed key at once)."""
    records = txt_strings(answer)
    # RFC 6376 3.6.2.2: several records at one name are ambiguous; prefer a DKIM1 key.
    return next((r for r in records if r.lstrip().startswith(b"v=DKIM1")), records[0])


@functools.lru_cache(maxsize=1024)
def _key_tags(record: bytes | None) -> dict[bytes, bytes]:
    """The tags of a key record (remembered: the same key comes with every message of a
    signer; callers only read the dict)."""
    if record is None:
        return {}
    try:
        return dict(parse_tag_value(record))
    except (InvalidTagValueList, ValueError):
        return {}


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return tag_list(value)
    except (InvalidTagValueList, ValueError):
        return {}


def _result(tags: dict[bytes, bytes], result: SignatureOutcome, reason: str) -> SignatureResult:
    def text(name: bytes) -> str:
        return tags.get(name, b"").decode("utf-8", "replace").strip()

    domain = text(b"d")
    b = "".join(text(b"b").split())  # str.split's white space is the \s of str patterns
    return SignatureResult(
        result=result,
        reason=reason,
        domain=domain,
        identity=text(b"i") or (f"@{domain}" if domain else ""),
        selector=text(b"s"),
        algorithm=text(b"a"),
        b=b[:8],
    )


def _raw_signatures(data: bytes) -> list[bytes]:
    """The DKIM-Signature values of a header block that dkimpy refused (best effort)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    unfolded = re.sub(rb"\r\n[ \t]", b" ", head)
    prefix = b"dkim-signature:"
    lines = unfolded.split(b"\r\n")
    return [line[len(prefix) :] for line in lines if line.lower().startswith(prefix)]


def _one_line(text: str) -> str:
    return " ".join(text.split())
