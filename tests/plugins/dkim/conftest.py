"""Fixtures for the dkim plugin's tests: keys in a test DNS zone, and opendkim as signer and
verifier (reached through mailgate's milter bridge, which carries the bytes unchanged)."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailgate.config import Dynamic
from mailgate.dns import DnsSettings
from mailgate.relay import RelayEgress, RelaySettings
from tests.peers.dns import DnsServer
from tests.peers.opendkim import DkimKey, OpenDkimFactory, make_key
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs
from tests.plugins.milter.conftest import milter
from tests.smtp.helpers import Gateway

DOMAIN = "dkim.example.com"


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of the ``dkim.example.com`` zone, by what each is for."""

    rsa: DkimKey  # made by `mailgate dkim keygen`
    ed25519: DkimKey  # made by `mailgate dkim keygen --algorithm ed25519`
    opendkim: DkimKey  # made by opendkim-genkey, 2048 bits
    weak: DkimKey  # opendkim-genkey -b 512


def keygen(directory: Path, selector: str, algorithm: str = "rsa") -> DkimKey:
    """A key made by ``mailgate dkim keygen``; the record is read back from what it printed."""
    path = directory / f"{selector}.key"
    argv = [
        sys.executable,
        "-m",
        "mailgate.cli",
        "dkim",
        "keygen",
        "-d",
        DOMAIN,
        "-s",
        selector,
        "-a",
        algorithm,
    ]
    done = subprocess.run([*argv, "-o", str(path)], capture_output=True, text=True, check=True)
    line = done.stdout.splitlines()[-1]
    record = "".join(line.split("(", 1)[1].rsplit(")", 1)[0].split('"')[1::2])
    return DkimKey(DOMAIN, selector, path, record)


def weak_key(directory: Path) -> DkimKey:
    """A 512-bit RSA key (opendkim-genkey warns, and makes it)."""
    subprocess.run(
        ["opendkim-genkey", "-b", "512", "-d", DOMAIN, "-s", "weak", "-D", str(directory)],
        check=True,
        capture_output=True,
    )
    txt = (directory / "weak.txt").read_text()
    record = "".join(txt.split("(", 1)[1].rsplit(")", 1)[0].split('"')[1::2])
    return DkimKey(DOMAIN, "weak", directory / "weak.private", record)


@pytest.fixture(scope="session")
def keys(peer_dirs: PeerDirs) -> Keys:
    """The keys, made once per test session."""
    directory = peer_dirs.new("dkim-keys")
    return Keys(
        rsa=keygen(directory, "rsa1"),
        ed25519=keygen(directory, "ed1", "ed25519"),
        opendkim=make_key(directory, DOMAIN, "od1"),
        weak=weak_key(directory),
    )


def zone_text(keys: Keys) -> str:
    """The dkim.example.com zone: every key, and selectors whose records say testing (t=y),
    revoked (p=), sha1 only (h=sha1) and strict (t=s)."""
    lines = [f"$ORIGIN {DOMAIN}.", "$TTL 300"]
    lines += [k.zone_line() for k in (keys.rsa, keys.ed25519, keys.opendkim, keys.weak)]
    testing = DkimKey(DOMAIN, "testing", keys.opendkim.private_key, "t=y; " + keys.opendkim.record)
    revoked = DkimKey(DOMAIN, "revoked", keys.opendkim.private_key, "v=DKIM1; k=rsa; p=")
    sha1_only = DkimKey(DOMAIN, "sha1only", keys.rsa.private_key, "h=sha1; " + keys.rsa.record)
    strict = DkimKey(DOMAIN, "strict", keys.rsa.private_key, "t=s; " + keys.rsa.record)
    lines += [testing.zone_line(), revoked.zone_line(), sha1_only.zone_line(), strict.zone_line()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def dkim_dns(keys: Keys) -> Iterator[DnsServer]:
    """A test DNS server with the dkim.example.com zone, for the whole session (opendkim verifiers
    started once keep asking it)."""
    server = DnsServer().start()
    server.add_zone(zone_text(keys))
    yield server
    server.stop()


def dns_settings(server: DnsServer, timeout: float = 2.0) -> DnsSettings:
    """The ``[dns]`` table that points at `server`."""
    return DnsSettings(nameservers=[f"{server.host}:{server.port}"], timeout=timeout)


Relay = Callable[[str, bytes], bytes]
"""``relay(milter_address, message) -> message``: the message after that milter."""


@pytest.fixture
def through_milter(smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[Relay]:
    """Pass a message through a milter (opendkim) with mailgate's bridge; the bytes that
    reach smtp-sink come back."""
    gateways: list[Gateway] = []

    def relay(address: str, data: bytes) -> bytes:
        egress = RelayEgress(
            RelaySettings(
                address=Dynamic.fixed(f"{smtp_sink.host}:{smtp_sink.port}"),
                helo_name="mailgate.test",
                quarantine_dir=str(tmp_path / "quarantine"),
            )
        )
        gateway = Gateway(egress, [milter(address)]).start()
        gateways.append(gateway)
        smtp_sink.clear()
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
            client.sendmail(f"alice@{DOMAIN}", ["bob@example.org"], data)
        [got] = smtp_sink.wait_for_messages(1)
        smtp_sink.clear()
        return got.data

    yield relay
    for gateway in gateways:
        gateway.stop()


@pytest.fixture(scope="session")
def opendkim_dkim_test(opendkim_factory: OpenDkimFactory, dkim_dns: DnsServer) -> str:
    """The milter address of an opendkim that verifies with the dkim.example.com zone."""
    return opendkim_factory("v", dns=dkim_dns).milter


def opendkim_signer(factory: OpenDkimFactory, key: DkimKey, **extra: str) -> str:
    """The milter address of an opendkim that signs mail from 127.0.0.1 with `key`."""
    return factory("s", key=key, extra=extra).milter
