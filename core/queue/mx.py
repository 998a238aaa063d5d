"""The mail hosts of a domain, in the order RFC 5321 §5.1 says to try them.

`mail_hosts` looks up the domain's MX records through ``[dns]`` (its resolver and shared
cache), orders them by preference, shuffled among equal preferences, and resolves each MX host
to its addresses (A, then AAAA). Without MX records the domain itself is the one host (the
implicit MX, from its A/AAAA records). A null MX (RFC 7505, ``0 .``) says the domain takes no
mail. An MX host that resolves to nothing is skipped. What cannot be reached at all raises
`NoRoute` with the reply the recipients get: 5xx when the DNS says so for good, 4xx when it
failed for now.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdtypes.ANY.MX
import dns.resolver

from mailgate.egress import Reply

ADDRESS_LIMIT = 5
"""Addresses tried for one domain per attempt, as Postfix's ``smtp_mx_address_limit``."""


@dataclass(frozen=True, slots=True)
class MailHost:
    """One address to try: the MX host's name (for TLS and logs), its address, preference."""

    name: str
    address: str
    preference: int = 0

    def describe(self, port: int) -> str:
        """``mx.example.com[192.0.2.1]:25``, as Postfix names the host that answered; a host
        known only by its address (a fixed next hop) as written: ``192.0.2.1:25``."""
        if self.name == self.address:
            return f"[{self.address}]:{port}" if ":" in self.address else f"{self.address}:{port}"
        return f"{self.name}[{self.address}]:{port}"


class NoRoute(Exception):
    """The recipients of a domain cannot be sent to now (a 4xx `reply`) or ever (5xx)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.status} {reply.text}")
        self.reply = reply


def _bounce(code: int, status: str, text: str) -> NoRoute:
    return NoRoute(Reply(code, status, text))


def _dns_failure(domain: str, what: str, exc: BaseException) -> NoRoute:
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    text = f"DNS lookup failed for {domain}, try again later"
    return NoRoute(Reply(451, "4.4.3", text, failure=f"{what}: {reason}"))


async def mail_hosts(
    resolver: dns.asyncresolver.Resolver, domain: str, limit: int = ADDRESS_LIMIT
) -> list[MailHost]:
    """The addresses to try for mail to `domain`, best first, at most `limit`; raises
    `NoRoute` when there are none."""
    if domain.startswith("[") and domain.endswith("]"):
        return [_literal(domain)]
    try:
        name = dns.name.from_text(domain)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        raise _bounce(550, "5.1.2", f"Bad destination domain {domain!r}") from None
    try:
        answer = await resolver.resolve(name, "MX")
        records = [r for r in answer if isinstance(r, dns.rdtypes.ANY.MX.MX)]
        implicit = False
    except dns.resolver.NXDOMAIN:
        raise _bounce(550, "5.1.2", f"Domain {domain} does not exist") from None
    except dns.resolver.NoAnswer:
        records, implicit = [], True
    except dns.exception.DNSException as exc:
        raise _dns_failure(domain, "MX", exc) from None
    if any(r.exchange == dns.name.root for r in records):
        raise _bounce(556, "5.1.10", f"Domain {domain} does not accept mail (null MX)")
    targets = [(0, name)] if implicit else _in_order(records)
    hosts: list[MailHost] = []
    failures: list[str] = []
    for preference, target in targets:
        try:
            addresses = await _addresses(resolver, target)
        except dns.exception.DNSException as exc:
            failures.append(f"{target.to_text(omit_final_dot=True)}: {exc}")
            continue
        host = target.to_text(omit_final_dot=True)
        hosts += [MailHost(host, a, preference) for a in addresses]
        if len(hosts) >= limit:
            return hosts[:limit]
    if hosts:
        return hosts
    if failures:
        raise _dns_failure(domain, "address of MX host", Exception("; ".join(failures)))
    if implicit:
        raise _bounce(550, "5.1.2", f"Domain {domain} has no MX and no address record")
    # MX records naming hosts that do not exist: a mistake its owner may still fix.
    raise NoRoute(Reply(451, "4.4.4", f"No address for any MX host of {domain}, try again later"))


def _in_order(records: list[dns.rdtypes.ANY.MX.MX]) -> list[tuple[int, dns.name.Name]]:
    """By preference, lowest first; shuffled among equal preferences (RFC 5321 §5.1)."""
    ordered: list[tuple[int, dns.name.Name]] = []
    by_preference = sorted(records, key=lambda r: r.preference)
    for preference, same in itertools.groupby(by_preference, key=lambda r: r.preference):
        names = [r.exchange for r in same]
        random.shuffle(names)
        ordered += [(preference, n) for n in names]
    return ordered


async def _addresses(resolver: dns.asyncresolver.Resolver, name: dns.name.Name) -> list[str]:
    """The A, then AAAA, addresses of `name`; [] when it has none. Raises a DNSException only
    when neither lookup gave an answer and one failed for now."""
    lookups = await asyncio.gather(
        *(_lookup(resolver, name, rdtype) for rdtype in ("A", "AAAA")), return_exceptions=True
    )
    addresses = [a for found in lookups if isinstance(found, list) for a in found]
    failed = [e for e in lookups if isinstance(e, BaseException)]
    if not addresses and failed:
        raise failed[0]
    return addresses


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: dns.name.Name, rdtype: str
) -> list[str]:
    try:
        answer = await resolver.resolve(name, rdtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [r.to_text() for r in answer]


def _literal(domain: str) -> MailHost:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``: that address itself (RFC 5321 §4.1.3)."""
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        address = ipaddress.ip_address(inner)
    except ValueError:
        raise _bounce(550, "5.1.2", f"Bad address literal {domain}") from None
    return MailHost(domain, str(address))
