"""Organizational domains (RFC 7489 3.2) and identifier alignment (3.1).

The public suffix list is the one the ``publicsuffixlist`` package ships: upgrading the package
(it is released whenever the list changes) keeps it current, and nothing is copied here.
Both the ICANN and the private sections count, as in opendmarc: ``a.github.io`` and
``b.github.io`` are different organizations.
"""

from __future__ import annotations

import functools

import dns.exception
import dns.name
from publicsuffixlist import PublicSuffixList

from mailgate.plugins.dmarc.record import Alignment


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # ~25 ms, once per process


@functools.lru_cache(maxsize=4096)
def normalize(domain: str) -> str:
    """A domain as compared and looked up: lower case, A-labels (``bücher.de`` is
    ``xn--bcher-kva.de``), no trailing dot; "" for what is not a domain name (empty or too
    long labels, an address literal).

    Cached: one message asks for the same few names several times, and the next message from
    the same domain asks again (dnspython's IDNA conversion costs ~20 µs a name)."""
    name = domain.strip().rstrip(".")
    if not name or name.startswith("["):
        return ""
    try:
        return dns.name.from_unicode(name).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return ""


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The registered domain of `domain`: one label below its public suffix.

    ``a.b.example.co.uk`` -> ``example.co.uk``. A public suffix itself (``co.uk``) and a name
    the list cannot place are their own organizational domain.
    """
    name = normalize(domain)
    return _psl().privatesuffix(name) or name


def aligned(author_domain: str, other: str, mode: Alignment) -> bool:
    """True if `other` (an SPF or DKIM domain) is aligned with the From domain in `mode`:
    the same name for strict, the same organizational domain for relaxed."""
    a, b = normalize(author_domain), normalize(other)
    if not a or not b:
        return False
    if a == b:
        return True
    return mode == "r" and organizational_domain(a) == organizational_domain(b)
