"""Fixtures for the arc plugin's tests: sealers' keys published in a test DNS, and chains of
one to three hops made by dkimpy's ``arc_sign`` (the independent implementation)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from mailgate.dns import DnsSettings
from tests.peers.dns import DnsServer
from tests.peers.opendkim import DkimKey
from tests.peers.workdir import PeerDirs

# Zones under example.com/.net/.org, not .test: opendkim's and rspamd's resolvers answer .test
# names themselves. The test DNS server refuses names outside its zones, so each has one.
ORIGIN = "arc.example.com"  # the author's domain; its mail server seals the first hop
FORWARDER = "fwd.example.net"  # a forwarder (second hop)
LIST = "lists.example.org"  # a mailing list (third hop)
OURS = "mailgate.example.org"  # mailgate's own seals

MESSAGE = (
    f"From: Alice <alice@{ORIGIN}>\r\nTo: bob@{FORWARDER}\r\nSubject: forwarded\r\n"
    f"Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <a1@{ORIGIN}>\r\n"
    "\r\nHello Bob,\r\n\r\nthis goes round the houses.\r\n"
).encode()


@dataclass(frozen=True, slots=True)
class SealerKeys:
    """One RSA key per sealing domain."""

    origin: DkimKey
    forwarder: DkimKey
    lists: DkimKey
    ours: DkimKey


def keygen(directory: Path, domain: str, selector: str) -> DkimKey:
    """A key made by ``mailgate dkim keygen``; the record is read back from what it printed."""
    path = directory / f"{domain}.{selector}.key"
    argv = [sys.executable, "-m", "mailgate.cli", "dkim", "keygen", "-d", domain, "-s", selector]
    done = subprocess.run([*argv, "-o", str(path)], capture_output=True, text=True, check=True)
    line = done.stdout.splitlines()[-1]
    record = "".join(line.split("(", 1)[1].rsplit(")", 1)[0].split('"')[1::2])
    return DkimKey(domain, selector, path, record)


@pytest.fixture(scope="session")
def sealer_keys(peer_dirs: PeerDirs) -> SealerKeys:
    directory = peer_dirs.new("arc-keys")
    return SealerKeys(
        origin=keygen(directory, ORIGIN, "arc1"),
        forwarder=keygen(directory, FORWARDER, "fwd1"),
        lists=keygen(directory, LIST, "list1"),
        ours=keygen(directory, OURS, "seal1"),
    )


def zone(key: DkimKey, *extra: str) -> str:
    lines = [f"$ORIGIN {key.domain}.", "$TTL 300", key.zone_line(), *extra]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def arc_dns(sealer_keys: SealerKeys) -> Iterator[DnsServer]:
    """A test DNS server with a zone per sealer; the author's domain publishes p=reject."""
    server = DnsServer().start()
    server.add_zone(
        zone(
            sealer_keys.origin,
            '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
            '_dmarc IN TXT "v=DMARC1; p=reject"',
            "@ IN A 192.0.2.10",
        )
    )
    forwarder_spf = '@ IN TXT "v=spf1 ip4:198.51.100.0/24 ip4:127.0.0.1 -all"'
    server.add_zone(zone(sealer_keys.forwarder, forwarder_spf))
    server.add_zone(zone(sealer_keys.lists, '@ IN TXT "v=spf1 ip4:203.0.113.0/24 -all"'))
    server.add_zone(zone(sealer_keys.ours))
    yield server
    server.stop()


def dns_settings(server: DnsServer | str, timeout: float = 2.0) -> DnsSettings:
    """The ``[dns]`` table that points at `server` (or at an ``ip:port``)."""
    where = server if isinstance(server, str) else f"{server.host}:{server.port}"
    return DnsSettings(nameservers=[where], timeout=timeout)


def hop(data: bytes, key: DkimKey, arc: str, *, results: str = "spf=pass") -> bytes:
    """`data` sealed by dkimpy as the mail server of `key`'s domain would: its results in an
    Authentication-Results header (with ``arc=`` its view of the chain), the set on top."""
    srv_id = f"mx.{key.domain}"
    ar = f"Authentication-Results: {srv_id}; {results}; arc={arc}\r\n".encode()
    made = dkim.arc_sign(
        ar + data,
        key.selector.encode(),
        key.domain.encode(),
        key.private_key.read_bytes(),
        srv_id.encode(),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    assert made, "dkimpy made no ARC set"
    return b"".join(made) + data


def chain(keys: SealerKeys, hops: int, data: bytes = MESSAGE) -> bytes:
    """`data` sealed by 1 to 3 hops: the origin, the forwarder, the list."""
    order = [keys.origin, keys.forwarder, keys.lists][:hops]
    for n, key in enumerate(order):
        data = hop(data, key, "none" if n == 0 else "pass")
    return data


def dkimpy_verdict(server: DnsServer, data: bytes) -> tuple[bytes | None, str]:
    """dkimpy's own ARC verdict on `data`, keys from `server`: (cv, reason)."""
    resolver = server.resolver()

    def txt(name: bytes, timeout: float = 5) -> bytes:
        return b"".join(resolver.resolve(name.decode(), "TXT")[0].strings)

    cv, _, reason = dkim.arc_verify(data, dnsfunc=txt)
    return cv, reason
