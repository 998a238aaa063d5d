"""The ``[dns]`` table and the resolvers built from it: one DNS configuration for every plugin.

Plugins that look things up in the DNS (SPF, DKIM, DMARC) take a `DnsSettings` and build their
resolver with `async_resolver` (dnspython's asyncio resolver) or `sync_resolver` (for a
synchronous library run in a thread, such as pyspf).

Every resolver built from one `DnsSettings` shares one answer cache (`shared_cache`):
dnspython's own `dns.resolver.LRUCache`, which is bounded, thread-safe (pyspf's lookups run
in threads), keeps each answer until its TTL (the lowest TTL in the CNAME chain) runs out,
and keeps negative answers as RFC 2308 says: NODATA under the asked type and NXDOMAIN for
every type, for the lower of the SOA's TTL and its MINIMUM. The app makes one `DnsSettings`
per configuration and hands it to every plugin, and keeps the cache over a reload
(`keep_cache`), so there is one cache per process.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import dns.asyncresolver
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from mailgate.config import Check, Networks

DEFAULT_PORT = 53


def parse_nameserver(value: str) -> tuple[str, int]:
    """``"192.0.2.53"`` -> ``("192.0.2.53", 53)``; ``"[::1]:5353"`` -> ``("::1", 5353)``.

    Raises `ValueError` unless `value` is an IP address, with an optional port (IPv6 with a
    port in brackets).
    """
    host, port = value, DEFAULT_PORT
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not an IP address with an optional port: {value!r}")
        host, port = inside, _port(rest[1:], value) if rest else DEFAULT_PORT
    elif value.count(":") == 1:
        host, _, text = value.partition(":")
        port = _port(text, value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address with an optional port: {value!r}") from None
    return host, port


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"not a port from 1 to 65535 in {value!r}")
    return int(text)


def _valid_nameservers(value: list[str]) -> bool:
    try:
        for server in value:
            parse_nameserver(server)
    except ValueError:
        return False
    return True


Nameservers = Annotated[
    list[str],
    Check(
        _valid_nameservers,
        'IP addresses with an optional port: "192.0.2.53", "192.0.2.53:5353", "[2001:db8::53]:53"',
    ),
]
"""A list of name servers as ``[dns] nameservers`` takes them."""


@dataclass(slots=True)
class DnsSettings:
    """The ``[dns]`` table."""

    nameservers: Nameservers = field(default_factory=list)
    """``"host"`` or ``"host:port"`` (IP addresses); empty: the system's ``/etc/resolv.conf``."""
    timeout: float = 5.0
    """Seconds one lookup may take, retries included; then it fails as a timeout."""
    cache_size: int = 10_000
    """Answers (positive and negative) kept in the shared cache, least recently used dropped
    first; 0: no cache."""
    reverse_lookups: bool = True
    """Look up the name of each client of an SMTP listener (forward-confirmed reverse DNS)
    and record the ``iprev`` result; milter and policy sessions keep the MTA's name."""
    reverse_lookup_skip: Networks = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Clients in these networks are not looked up (this host's own programs)."""
    cache: dns.resolver.LRUCache | None = field(default=None, init=False, repr=False, compare=False)
    """The shared cache, made by `shared_cache` (not a configuration key)."""

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        if self.cache_size < 0:
            raise ValueError("cache_size must be 0 (no cache) or a positive number of answers")


def shared_cache(settings: DnsSettings) -> dns.resolver.LRUCache | None:
    """The answer cache of every resolver built from `settings` (None with ``cache_size = 0``)."""
    if settings.cache_size == 0:
        return None
    if settings.cache is None:
        settings.cache = dns.resolver.LRUCache(settings.cache_size)
    return settings.cache


def keep_cache(old: DnsSettings, new: DnsSettings) -> None:
    """On a reload: `new` shares `old`'s cache when the same name servers answer (resized to
    the new ``cache_size``); other servers may answer otherwise, so then it starts empty."""
    if old.cache is not None and new.cache_size and old.nameservers == new.nameservers:
        old.cache.set_max_size(new.cache_size)
        new.cache = old.cache


def _configure(resolver: dns.resolver.BaseResolver, settings: DnsSettings) -> None:
    if settings.nameservers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(s)) for s in settings.nameservers
        ]
    resolver.lifetime = settings.timeout
    resolver.timeout = settings.timeout
    resolver.cache = shared_cache(settings)


def async_resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    """A dnspython asyncio resolver that asks the configured name servers, with the shared
    cache."""
    resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
    _configure(resolver, settings)
    return resolver


def sync_resolver(settings: DnsSettings) -> dns.resolver.Resolver:
    """A synchronous dnspython resolver (for a library run in a thread) with the same setup."""
    resolver = dns.resolver.Resolver(configure=not settings.nameservers)
    _configure(resolver, settings)
    return resolver


class CacheMiss(Exception):
    """`cached_answer` found nothing in the cache: the lookup needs the network."""


def cached_answer(
    resolver: dns.resolver.BaseResolver,
    name: str,
    rdtype: str,
    *,
    entries: list[object] | None = None,
) -> dns.resolver.Answer:
    """What ``resolver.resolve(name, rdtype, search=False)`` would answer from the cache alone,
    never asking a server: the answer, or `dns.resolver.NoAnswer` / `dns.resolver.NXDOMAIN`
    for a cached negative answer, or `CacheMiss`.

    This lets a plugin run a synchronous library (pyspf, dkimpy) inside the event loop when
    every answer it needs is cached, and in a worker thread only when one is not.

    With `entries`, the cache entry the answer (or the negative answer) came from is appended
    to it: `cache_entry` gives that same object for as long as the cache keeps it, so a caller
    can tell later, cheaply, that the answer has not changed.
    """
    found = _entry(resolver, name, rdtype)
    if found is None:
        raise CacheMiss(name)
    entry, nxdomain = found
    if entries is not None:
        entries.append(entry)
    if nxdomain:
        qname = _name(name)
        responses = {qname: entry.response}
        raise dns.resolver.NXDOMAIN(qnames=[qname], responses=responses)  # type: ignore[no-untyped-call]
    if entry.rrset is None:
        raise dns.resolver.NoAnswer(response=entry.response)  # type: ignore[no-untyped-call]
    return entry


def txt_strings(answer: Iterable[Any]) -> list[bytes]:
    """Each TXT record of `answer` as one byte string: its character-strings joined, as SPF
    (RFC 7208 3.3), DKIM keys (RFC 6376 3.6.2.2) and DMARC records (RFC 7489 6.6.3) read them."""
    return [b"".join(rdata.strings) for rdata in answer]


def cache_entry(resolver: dns.resolver.BaseResolver, name: str, rdtype: str) -> object | None:
    """The cache entry `cached_answer` would answer ``name rdtype`` from (the same object
    while the cache keeps it, a new one once it expired or was replaced), or None."""
    found = _entry(resolver, name, rdtype)
    return None if found is None else found[0]


def _entry(
    resolver: dns.resolver.BaseResolver, name: str, rdtype: str
) -> tuple[dns.resolver.Answer, bool] | None:
    """The cached answer of ``name rdtype`` (its rrset None for "no data"), or the name's
    cached NXDOMAIN, which holds for every type, with True; None when neither is cached."""
    cache = resolver.cache
    if cache is None:
        return None
    qname = _name(name)
    rdclass = dns.rdataclass.IN
    answer: dns.resolver.Answer | None = cache.get((qname, _rdtype(rdtype), rdclass))
    if answer is not None:
        return answer, False
    missing: dns.resolver.Answer | None = cache.get((qname, dns.rdatatype.ANY, rdclass))
    if missing is not None and missing.response.rcode() == dns.rcode.NXDOMAIN:
        return missing, True
    return None


@functools.lru_cache(maxsize=4096)
def _name(text: str) -> dns.name.Name:
    """`dns.name.from_text`, remembered (a Name is immutable; parsing one costs ~10 µs, and the
    same few names are asked for with every message)."""
    return _LookupName(dns.name.from_text(text))


@functools.lru_cache(maxsize=64)
def _rdtype(text: str) -> dns.rdatatype.RdataType:
    return dns.rdatatype.from_text(text)


class _LookupName(dns.name.Name):
    """A name to find in the cache, the same name as `dns.name.Name` says, found sooner:
    dnspython computes a Name's hash byte by byte in Python at every lookup (~1.8 µs for a
    DKIM key's name) and compares two Names label by label, case-folded (~1 µs). This one
    keeps its hash, and is equal at once to a Name with the very same labels."""

    __slots__ = ("_hash",)
    _hash: int

    def __init__(self, name: dns.name.Name) -> None:
        super().__init__(name.labels)
        object.__setattr__(self, "_hash", hash(name))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dns.name.Name) and other.labels == self.labels:
            return True
        return bool(super().__eq__(other))  # type: ignore[no-untyped-call]

    def __ne__(self, other: object) -> bool:
        return not self == other
