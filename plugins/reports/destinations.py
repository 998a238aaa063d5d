"""Where a report may go: the ``rua`` URIs (RFC 7489 6.2, 6.4) and the external destination
verification (7.1).

A ``rua`` lists URIs, each optionally ending in ``!size`` (a number with an optional unit
``k``, ``m``, ``g`` or ``t``, powers of 1024): the largest report that URI takes. Only
``mailto:`` is sent to; other schemes are skipped and said so. An address in a different
organizational domain than the policy domain receives reports only when that domain
publishes ``<policy domain>._report._dmarc.<its domain>`` TXT ``v=DMARC1``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from mailgate.dns import txt_strings
from mailgate.plugins.dmarc.domains import normalize, organizational_domain
from mailgate.plugins.dmarc.record import is_dmarc

_SIZE = re.compile(r"^(.*)!(\d+)([kmgt]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True, slots=True)
class Destination:
    """One ``rua`` URI: the address it names (empty when it is not a usable ``mailto:``),
    its size limit (0: none) and the URI as published."""

    uri: str
    address: str
    max_size: int = 0
    problem: str = ""
    """Why it cannot be used, when it cannot."""

    @property
    def domain(self) -> str:
        """The address's domain, normalized."""
        return normalize(self.address.rpartition("@")[2])


def parse_destination(uri: str) -> Destination:
    """One ``rua`` URI as published."""
    text, max_size = uri.strip(), 0
    sized = _SIZE.match(text)
    if sized:
        text = sized.group(1)
        max_size = int(sized.group(2)) * _UNITS[sized.group(3).lower()]
    scheme, _, rest = text.partition(":")
    if scheme.lower() != "mailto":
        return Destination(uri, "", max_size, f"{scheme or 'no'} scheme: only mailto is sent to")
    address = urllib.parse.unquote(rest.partition("?")[0]).strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not normalize(domain):
        return Destination(uri, "", max_size, "not a mail address")
    return Destination(uri, address, max_size)


class VerificationUnavailable(Exception):
    """The verification record could not be looked up now (a DNS failure): try later."""


def needs_verification(policy_domain: str, destination: Destination) -> bool:
    """True when `destination` is outside the policy domain's organization (RFC 7489 7.1)."""
    return organizational_domain(destination.domain) != organizational_domain(policy_domain)


async def verify(
    resolver: dns.asyncresolver.Resolver, policy_domain: str, destination: Destination
) -> bool:
    """True if `destination`'s domain accepts reports about `policy_domain`: it publishes a
    ``v=DMARC1`` TXT record at ``<policy domain>._report._dmarc.<destination domain>``.
    Raises `VerificationUnavailable` when DNS does not answer."""
    name = f"{normalize(policy_domain)}._report._dmarc.{destination.domain}"
    try:
        answer = await resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return False
    except dns.exception.DNSException as exc:
        raise VerificationUnavailable(f"looking up {name} TXT: {exc}") from exc
    texts = (text.decode("utf-8", "replace") for text in txt_strings(answer))
    return any(is_dmarc(t) for t in texts)
