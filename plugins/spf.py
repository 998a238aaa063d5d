"""SPF (RFC 7208): check the sender's domain against the client's address at MAIL FROM.

pyspf does the evaluation; its lookups go to the core ``[dns]`` name servers. When every
answer it needs is in the shared DNS cache (most mail) it runs in the event loop, which costs
less than the worker thread it otherwise runs in.
Enable with ``conf.d/80-spf.toml``; see ``docs/plugins/spf.md``.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dns.exception
import dns.resolver
import spf

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.config import Dynamic, Networks, fixed_dynamics
from mailgate.dns import (
    CacheMiss,
    DnsSettings,
    cache_entry,
    cached_answer,
    sync_resolver,
    txt_strings,
)

RESULT_KEY = "spf"
"""The key of this plugin's entry in ``transaction.results``."""

SpfResult = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]

_HEADER_NOTE = "spf.received_spf"

REUSED_OUTCOMES = 4096
"""Outcomes of checks answered from the DNS cache that are kept, to be given again while every
DNS answer they read is still the same cache entry: per (client address, sender's domain,
HELO) when no record read looks at the local part, else per (client address, sender, HELO);
at most this many of each."""

_TIME_MACRO = re.compile(rb"%\{t", re.IGNORECASE)
"""The SPF macro of the current time (RFC 7208 7.2), which only explanations may hold."""
_LOCAL_PART_MACRO = re.compile(rb"%\{[sl]", re.IGNORECASE)
"""The SPF macros of the sender (``s``) and its local part (``l``) (RFC 7208 7.2): the only
way a check's outcome depends on the local part of the sender."""

# pyspf calls its module-level `DNSLookup` for every query. It is replaced once, at import, by
# `_lookup`, which uses the resolver of the check running in this context and otherwise does
# exactly what pyspf's own function did: other users of pyspf in the process are unaffected.
_resolver: contextvars.ContextVar[dns.resolver.Resolver] = contextvars.ContextVar("spf_resolver")


class _CacheOnly:
    """A check run in the event loop: its lookups answer from the DNS cache alone. It lists
    each lookup the cache could not answer (pyspf swallows some exceptions, so the list says
    it) and the cache entries the others came from, which `Spf` keeps to reuse the outcome."""

    __slots__ = ("entries", "local_part", "lookups", "missed", "timestamped")

    def __init__(self) -> None:
        self.missed: list[str] = []
        self.lookups: list[tuple[str, str]] = []
        self.entries: list[object] = []
        self.timestamped = False
        """A TXT record read has the ``%{t}`` macro (the time of the check): not reusable."""
        self.local_part = False
        """A TXT record read has ``%{s}`` or ``%{l}``: reusable for this very sender only."""


_cache_only: contextvars.ContextVar[_CacheOnly | None] = contextvars.ContextVar(
    "spf_cache_only", default=None
)
"""Set for a check run in the event loop (`_CacheOnly`)."""
_pyspf_lookup: Callable[..., list[tuple[tuple[str, str], Any]]] = spf.DNSLookup


def _lookup(
    name: str, qtype: str, strict: bool = True, timeout: float = 30
) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNS lookup, answered by the resolver set for the running check."""
    resolver = _resolver.get(None)
    if resolver is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    cache_only = _cache_only.get()
    try:
        if cache_only is None:
            answer = resolver.resolve(
                name, qtype, lifetime=min(timeout, resolver.lifetime), search=False
            )
        else:
            answer = _cached(resolver, name, qtype, cache_only)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return []
    except dns.exception.DNSException as exc:  # timeout, no server answered, malformed reply
        raise spf.TempError(f"DNS {exc}") from exc
    return [((name, qtype), _value(qtype, rdata)) for rdata in answer]


def _cached(
    resolver: dns.resolver.Resolver, name: str, qtype: str, check: _CacheOnly
) -> dns.resolver.Answer:
    entries = len(check.entries)
    try:
        answer = cached_answer(resolver, name, qtype, entries=check.entries)
    except CacheMiss:
        check.missed.append(f"{name} {qtype}")
        raise
    finally:
        if len(check.entries) > entries:
            check.lookups.append((name, qtype))
    if qtype == "TXT":
        for text in txt_strings(answer):
            if b"%" in text:
                check.timestamped = check.timestamped or bool(_TIME_MACRO.search(text))
                check.local_part = check.local_part or bool(_LOCAL_PART_MACRO.search(text))
    return answer


def _value(qtype: str, rdata: Any) -> Any:
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return (rdata.preference, rdata.exchange)
    if qtype == "PTR":
        return rdata.target.to_text(True)
    return rdata.strings  # TXT


spf.DNSLookup = _lookup


@dataclass(slots=True)
class SpfSettings:
    """Settings of the ``spf`` plugin (``conf.d/80-spf.toml``)."""

    reject: Dynamic[list[SpfResult]] = field(default=Dynamic.fixed(["fail"]))
    """Results refused at MAIL FROM with 550 (5.7.23; 5.7.24 for permerror and temperror).
    Per transaction: rules read at MAIL (``client``, ``helo``, ``auth``, ``sender``; no
    ``rcpt``), e.g. ``[{ if = 'sender.domain == "bank.example"', then = ["fail",
    "softfail"] }, { else = ["fail"] }]``."""
    tempfail: Dynamic[list[SpfResult]] = field(default=Dynamic.fixed(["temperror"]))
    """Results refused at MAIL FROM with 451 4.7.24 (the client may try again later); read
    at MAIL like `reject`, which is checked first."""
    header: bool = True
    """Add a ``Received-SPF:`` header (RFC 7208 9.1) at the end of data."""
    skip_networks: Networks = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Clients in these networks are not checked (result ``skipped``)."""
    check_timeout: float = 20.0
    """Seconds all the DNS lookups of one check may take together; then ``temperror``."""
    receiver: str = ""
    """This host's name in the header; empty: the machine's FQDN."""

    def __post_init__(self) -> None:
        fixed_dynamics(self)
        both = sorted(set(self.reject.default) & set(self.tempfail.default))
        if both and self.reject.is_fixed and self.tempfail.is_fixed:
            raise ValueError(f"tempfail names {', '.join(both)}, which reject names too")
        if self.check_timeout <= 0:
            raise ValueError("check_timeout must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """What one check found: the result, pyspf's explanation and the Received-SPF value."""

    result: str
    explanation: str
    identity: str
    domain: str
    header: str


@dataclass(frozen=True, slots=True)
class _Reusable:
    """The outcome of a check answered from the DNS cache, and the lookups it made with the
    cache entry that answered each."""

    outcome: SpfOutcome
    lookups: tuple[tuple[str, str], ...]
    entries: tuple[object, ...]
    sender: str
    """The sender the outcome was found for (its Received-SPF header names it)."""

    def still_answered(self, resolver: dns.resolver.Resolver) -> bool:
        """True while every lookup would be answered by the same cache entry."""
        return all(
            cache_entry(resolver, name, qtype) is entry
            for (name, qtype), entry in zip(self.lookups, self.entries, strict=True)
        )

    def for_sender(self, sender: str) -> SpfOutcome | None:
        """The outcome for another local part of the same domain: the same, but for the
        header's ``envelope-from``; None if the header does not name the sender as expected."""
        if sender == self.sender:
            return self.outcome
        old = f" envelope-from={spf.quote_value(self.sender)};"
        header = self.outcome.header
        if header.count(old) != 1:
            return None
        new = f" envelope-from={spf.quote_value(sender)};"
        return replace(self.outcome, header=header.replace(old, new))


class Spf:
    """Checks the MAIL FROM (or, for ``<>``, the HELO) identity of each transaction."""

    Settings = SpfSettings
    reads: frozenset[str] = frozenset()
    """It decides from the envelope and only adds a header."""

    def __init__(self, settings: SpfSettings | None = None, *, dns: DnsSettings | None = None):
        self.settings = settings or SpfSettings()
        self.resolver = sync_resolver(dns or DnsSettings())
        self.receiver = self.settings.receiver or socket.getfqdn()
        self._skip = [ipaddress.ip_network(n, strict=False) for n in self.settings.skip_networks]
        self._reusable: dict[tuple[str, str, str], _Reusable] = {}
        self._reusable_by_domain: dict[tuple[str, str, str], _Reusable] = {}

    @hookimpl
    async def on_mail(
        self, session: Session, transaction: Transaction, sender: Address
    ) -> Verdict | None:
        """Check SPF; refuse or tempfail the sender when the settings say so."""
        skipped = self._skip_reason(session)
        if skipped:
            transaction.set_result(RESULT_KEY, "skipped", reason=skipped)
            return None
        outcome = await self.check(session.client_ip, sender.address, session.helo)
        self._record(transaction, outcome)
        return self._verdict(outcome, session, transaction)

    @hookimpl
    def on_message(self, transaction: Transaction) -> None:
        """Add the Received-SPF header of this transaction's check."""
        header = transaction.notes.get(_HEADER_NOTE)
        if self.settings.header and header:
            transaction.add_header("Received-SPF", header)

    def _skip_reason(self, session: Session) -> str:
        if session.auth_login:
            return "authenticated"
        try:
            ip = ipaddress.ip_address(session.client_ip)
        except ValueError:
            return "no client address"
        if any(ip in network for network in self._skip):
            return "skip_networks"
        return ""

    async def check(self, ip: str, sender: str, helo: str) -> SpfOutcome:
        """Evaluate SPF for `ip` sending as `sender` (or as `helo` when `sender` is empty)."""
        limit = self.settings.check_timeout
        outcome = self._check_cached(ip, sender, helo)
        if outcome is not None:
            return outcome
        try:
            async with asyncio.timeout(limit + 1.0):
                return await asyncio.to_thread(self._check, ip, sender, helo)
        except TimeoutError:
            domain = sender.rpartition("@")[2] or helo
            reason = f"SPF check took longer than {limit:g}s"
            identity = "mailfrom" if sender else "helo"
            return SpfOutcome("temperror", reason, identity, domain, "")

    def _check_cached(self, ip: str, sender: str, helo: str) -> SpfOutcome | None:
        """The check with the cached DNS answers alone, or None if one is not cached.

        pyspf's outcome depends only on the identities and on the DNS answers it read (and on
        the time, through the ``%{t}`` macro of an explanation): an earlier check of the same
        identities whose answers are all still the same cache entries gave this outcome, so
        it is given again without running pyspf. The sender's local part counts only through
        the ``%{s}`` and ``%{l}`` macros: a check whose records have neither serves every
        sender of the domain (with its own ``envelope-from`` in the header)."""
        domain_key = _domain_key(ip, sender, helo)
        if domain_key is not None:
            shared = self._reusable_by_domain.get(domain_key)
            if shared is not None and shared.still_answered(self.resolver):
                outcome = shared.for_sender(sender)
                if outcome is not None:
                    return outcome
        key = (ip, sender, helo)
        earlier = self._reusable.get(key)
        if earlier is not None and earlier.still_answered(self.resolver):
            return earlier.outcome
        check = _CacheOnly()
        token = _cache_only.set(check)
        try:
            outcome = self._check(ip, sender, helo)
        except CacheMiss:
            return None
        finally:
            _cache_only.reset(token)
        if check.missed:
            return None
        if not check.timestamped:
            reusable = _Reusable(outcome, tuple(check.lookups), tuple(check.entries), sender)
            if domain_key is not None and not check.local_part:
                _keep(self._reusable_by_domain, domain_key, reusable)
            else:
                _keep(self._reusable, key, reusable)
        return outcome

    def _check(self, ip: str, sender: str, helo: str) -> SpfOutcome:
        """The blocking check, in a worker thread (its own copy of the context), or in the
        event loop with cached answers only (`_check_cached`)."""
        if not sender and not helo:
            return SpfOutcome("none", "no identity to check", "helo", "", "")
        token = _resolver.set(self.resolver)
        try:
            query = spf.query(
                i=ip,
                s=sender,
                h=helo,
                receiver=self.receiver,
                querytime=self.settings.check_timeout,
            )
            result, _code, explanation = query.check()
            header = query.get_header(result, self.receiver)
        finally:
            _resolver.reset(token)
        return SpfOutcome(result, explanation, query.ident, query.d, header)

    def _record(self, transaction: Transaction, outcome: SpfOutcome) -> None:
        prop = "smtp.mailfrom" if outcome.identity == "mailfrom" else "smtp.helo"
        transaction.set_result(
            RESULT_KEY,
            outcome.result,
            reason=outcome.explanation,
            identity=outcome.identity,
            domain=outcome.domain,
            auth_method="spf",
            auth_properties={prop: outcome.domain},
        )
        if outcome.header:
            transaction.notes[_HEADER_NOTE] = outcome.header

    def _verdict(
        self, outcome: SpfOutcome, session: Session, transaction: Transaction
    ) -> Verdict | None:
        text = _reply_text(outcome)
        if outcome.result in self.settings.reject.value(session, transaction):
            status = "5.7.24" if outcome.result in ("permerror", "temperror") else "5.7.23"
            return Verdict.reject(550, status, text)
        if outcome.result in self.settings.tempfail.value(session, transaction):
            return Verdict.tempfail(451, "4.7.24", text)
        return None


def _keep(
    reusables: dict[tuple[str, str, str], _Reusable], key: tuple[str, str, str], kept: _Reusable
) -> None:
    reusables.pop(key, None)
    if len(reusables) >= REUSED_OUTCOMES:
        del reusables[next(iter(reusables))]  # the oldest
    reusables[key] = kept


def _domain_key(ip: str, sender: str, helo: str) -> tuple[str, str, str] | None:
    """The key under which a check serves every local part of the sender's domain, or None
    for a sender that is not one plain ``local@domain`` (the null sender checks the HELO)."""
    local, at, domain = sender.partition("@")
    if not local or not at or not domain or "@" in domain:
        return None
    return (ip, domain, helo)


def _reply_text(outcome: SpfOutcome) -> str:
    explanation = " ".join(outcome.explanation.split()) or outcome.result
    return f"SPF {outcome.result} for {outcome.domain or '(no domain)'}: {explanation}"
