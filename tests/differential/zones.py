"""The DNS of the differential corpus: one zone each for example.com, example.net and
example.org, so every name a check can ask about (organisational-domain DMARC records
included) is answered by the test DNS server, never REFUSED. Names under ``.test`` are not
used: opendkim's resolver answers them itself."""

from __future__ import annotations

from tests.differential.keys import CorpusKeys
from tests.peers.dns import DnsServer
from tests.peers.opendkim import DkimKey

GOOD_NET = "192.0.2.0/24"
"""The network the corpus's SPF records allow; clients outside it are 198.51.100.7."""

SILENT = ("slow._domainkey.alpha.example.com.", "slow.spf.example.net.")
"""Names the DNS server never answers: a DKIM key and an SPF record that time out."""


def key_line(key: DkimKey, origin: str, *, selector: str = "", prefix: str = "") -> str:
    """`key`'s record as a zone line relative to `origin` (under another selector, or with
    tags in front, when given); long records split into strings of 200 characters."""
    record = prefix + key.record
    chunks = " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))
    name = f"{selector or key.selector}._domainkey.{key.domain}".removesuffix(f".{origin}")
    return f"{name} IN TXT ( {chunks} )"


def _head(origin: str) -> list[str]:
    return [
        f"$ORIGIN {origin}.",
        "$TTL 300",
        f"@ IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 300",
        f"@ IN NS ns1.{origin}.",
        "ns1 IN A 127.0.0.153",
    ]


def example_com(keys: CorpusKeys) -> str:
    """alpha (p=reject, the DKIM keys), arc (the ARC origin), policy domains, and an
    organisational record whose sp=reject covers subdomains without a record."""
    lines = [
        *_head("example.com"),
        '_dmarc IN TXT "v=DMARC1; p=none; sp=reject"',
        f'alpha IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        "alpha IN A 192.0.2.10",
        '_dmarc.alpha IN TXT "v=DMARC1; p=reject"',
        key_line(keys.opendkim, "example.com"),
        key_line(keys.rsa, "example.com"),
        key_line(keys.ed25519, "example.com"),
        key_line(keys.weak, "example.com"),
        key_line(keys.rsa, "example.com", selector="testing", prefix="t=y; "),
        # the rsa key without opendkim-genkey's h=sha256, so an rsa-sha1 signature can verify
        key_line(keys.rsa_any_hash, "example.com", selector="anyhash"),
        'revoked._domainkey.alpha IN TXT "v=DKIM1; k=rsa; p="',
        # slow._domainkey.alpha: silenced; missing._domainkey.alpha: no record
        f'arc IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        '_dmarc.arc IN TXT "v=DMARC1; p=reject"',
        key_line(keys.arc_origin, "example.com"),
        f'none-policy IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        '_dmarc.none-policy IN TXT "v=DMARC1; p=none"',
        f'quarantine IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        '_dmarc.quarantine IN TXT "v=DMARC1; p=quarantine"',
        f'reject IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        '_dmarc.reject IN TXT "v=DMARC1; p=reject"',
        f'news.alpha IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        "news.alpha IN A 192.0.2.10",
    ]
    return "\n".join(lines) + "\n"


def example_net(keys: CorpusKeys) -> str:
    """The SPF cases under spf.example.net (whose own record is p=none), a third-party DKIM
    signer, the ARC forwarder, and a domain without any DMARC record."""
    lines = [
        *_head("example.net"),
        '_dmarc.spf IN TXT "v=DMARC1; p=none"',
        f'spf IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        f'pass.spf IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        f'fail.spf IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        f'softfail.spf IN TXT "v=spf1 ip4:{GOOD_NET} ~all"',
        f'neutral.spf IN TXT "v=spf1 ip4:{GOOD_NET} ?all"',
        "none.spf IN A 192.0.2.10",
        'permerror.spf IN TXT "v=spf1 ip4:192.0.2.0/24 frobnicate:x -all"',
        'twice.spf IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
        'twice.spf IN TXT "v=spf1 ip4:192.0.2.0/24 ~all"',
        'include.spf IN TXT "v=spf1 include:pass.spf.example.net -all"',
        'badinclude.spf IN TXT "v=spf1 include:nowhere.spf.example.net -all"',
        'redirect.spf IN TXT "v=spf1 redirect=pass.spf.example.net"',
        'mx.spf IN TXT "v=spf1 mx -all"',
        "mx.spf IN MX 10 mail.mx.spf",
        "mail.mx.spf IN A 192.0.2.10",
        'a.spf IN TXT "v=spf1 a:host.a.spf.example.net -all"',
        "host.a.spf IN A 192.0.2.10",
        f'helo.spf IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        "helo.spf IN A 192.0.2.10",
        'beta IN TXT "v=spf1 -all"',
        key_line(keys.third_party, "example.net"),
        'fwd IN TXT "v=spf1 ip4:198.51.100.0/24 -all"',
        key_line(keys.arc_forwarder, "example.net"),
        f'nodmarc IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
    ]
    return "\n".join(lines) + "\n"


def example_org(keys: CorpusKeys) -> str:
    """An organisational record p=reject; sp=quarantine, strict and relaxed alignment
    domains, and the ARC list."""
    lines = [
        *_head("example.org"),
        '_dmarc IN TXT "v=DMARC1; p=reject; sp=quarantine"',
        f'strict IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        '_dmarc.strict IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"',
        f'bounce.strict IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        key_line(keys.strict, "example.org"),
        key_line(keys.strict_sub, "example.org"),
        f'relaxed IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        '_dmarc.relaxed IN TXT "v=DMARC1; p=quarantine; adkim=r; aspf=r"',
        f'bounce.relaxed IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        f'news IN TXT "v=spf1 ip4:{GOOD_NET} -all"',
        "news IN A 192.0.2.10",
        'lists IN TXT "v=spf1 ip4:203.0.113.0/24 -all"',
        key_line(keys.arc_list, "example.org"),
    ]
    return "\n".join(lines) + "\n"


def serve(server: DnsServer, keys: CorpusKeys) -> None:
    """Load the three zones into `server` and silence the names that must time out."""
    for text in (example_com(keys), example_net(keys), example_org(keys)):
        server.add_zone(text)
    for name in SILENT:
        server.silence(name)
