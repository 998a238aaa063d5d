"""The client's name by forward-confirmed reverse DNS (FCrDNS), and its ``iprev`` result.

RFC 8601 section 3 (``iprev``): the PTR names of the client's address are looked up, then the
addresses of each name (A for an IPv4 client, AAAA for IPv6); the name is confirmed when one
of them is the client's address. Only a confirmed name becomes ``session.client_name``, so
``Received:``, expressions (``client.name``) and plugins never see a name the client's owner
merely claims. The result goes to ``session.notes["iprev"]`` for the Authentication-Results
header (`mailgate.authentication_results`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

from mailgate.dns import DnsSettings, async_resolver
from mailgate.logging import get_logger
from mailgate.session import Session

log = get_logger("mailgate.iprev")

IPREV_NOTE = "iprev"
"""`Session.notes` key holding the session's `IprevResult`."""

MAX_NAMES = 10
"""PTR names checked at most, as RFC 7208 (SPF) limits its ``ptr`` mechanism: an address
with a hundred PTR records must not cost a hundred lookups."""

IprevValue = Literal["pass", "fail", "temperror", "permerror"]
IPv4or6 = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class IprevResult:
    """The ``iprev`` result for `ip` (RFC 8601 section 3).

    - ``pass``: `name` is a PTR name of `ip` and resolves back to it;
    - ``fail``: there are PTR names, but none resolves back to `ip`;
    - ``temperror``: a lookup failed (timeout, SERVFAIL) before a name was confirmed;
    - ``permerror``: `ip` has no PTR record (NXDOMAIN or no data).
    """

    result: IprevValue
    ip: str
    name: str = ""
    """The confirmed name (``pass`` only), without the final dot."""
    reason: str = ""


async def forward_confirmed_name(resolver: dns.asyncresolver.Resolver, ip: str) -> IprevResult:
    """FCrDNS for `ip` (an IPv4-mapped IPv6 address counts as the IPv4 one).

    Each lookup has the resolver's own deadline (``[dns] timeout``): the PTR first, then the
    forward lookups of up to `MAX_NAMES` names at the same time. Raises `ValueError` if `ip`
    is not an IP address.
    """
    address = _address(ip)
    text = str(address)
    try:
        answer = await resolver.resolve(dns.reversename.from_address(text), "PTR", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return IprevResult("permerror", text, reason="no PTR record")
    except dns.exception.DNSException as exc:
        return IprevResult("temperror", text, reason=f"PTR lookup failed: {_describe(exc)}")
    names = list(dict.fromkeys(r.target.to_text(omit_final_dot=True) for r in answer))
    names = names[:MAX_NAMES]
    rdtype = "AAAA" if address.version == 6 else "A"
    found = await asyncio.gather(*(_addresses(resolver, n, rdtype) for n in names))
    for name, addresses in zip(names, found, strict=True):
        if addresses is not None and address in addresses:
            return IprevResult("pass", text, name)
    if any(addresses is None for addresses in found):
        return IprevResult("temperror", text, reason="a forward lookup failed")
    return IprevResult("fail", text, reason=f"{', '.join(names)} does not resolve to {text}")


async def _addresses(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
) -> set[IPv4or6] | None:
    """The addresses of `name` (empty when it has none); None when the lookup failed."""
    try:
        answer = await resolver.resolve(name + ".", rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return set()
    except dns.exception.DNSException:
        return None
    return {ipaddress.ip_address(r.address) for r in answer}


def _address(ip: str) -> IPv4or6:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _describe(exc: dns.exception.DNSException) -> str:
    return type(exc).__name__ if not str(exc) else str(exc)


class ClientNames:
    """Names the clients of the SMTP listener (``[dns] reverse_lookups``).

    Built once per configuration; its resolver shares the ``[dns]`` cache. A milter or policy
    session keeps the name its MTA gave (Postfix forward-confirms it too), and clients in
    ``[dns] reverse_lookup_skip`` (loopback by default) are not looked up.
    """

    def __init__(self, settings: DnsSettings) -> None:
        self.resolver = async_resolver(settings)
        self.skip = [ipaddress.ip_network(n, strict=False) for n in settings.reverse_lookup_skip]

    async def name(self, session: Session) -> None:
        """Set ``session.client_name`` (when confirmed) and ``session.notes["iprev"]``."""
        if session.ingress != "smtp" or session.client_name:
            return
        try:
            address = _address(session.client_ip)
        except ValueError:
            return
        if any(address in network for network in self.skip):
            return
        result = await forward_confirmed_name(self.resolver, str(address))
        session.notes[IPREV_NOTE] = result
        if result.result == "pass":
            session.client_name = result.name
        log.debug("client name", iprev=result.result, name=result.name, reason=result.reason)
