"""opendkim as a signing or verifying milter on loopback, with keys made by opendkim-genkey."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.dns import DnsServer
from tests.peers.milter_probe import optneg_probe
from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, start_daemon, stop_all
from tests.peers.workdir import PeerDirs


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A DKIM key pair: the private key file and the public record for DNS."""

    domain: str
    selector: str
    private_key: Path
    record: str  # the TXT value: "v=DKIM1; h=sha256; k=rsa; p=..."

    @property
    def dns_name(self) -> str:
        """Where the record lives: ``<selector>._domainkey.<domain>``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def zone_line(self) -> str:
        """The record as a zone-file line relative to the domain (for DnsServer.add_records)."""
        chunks = [self.record[i : i + 200] for i in range(0, len(self.record), 200)]
        quoted = " ".join(f'"{chunk}"' for chunk in chunks)
        return f"{self.selector}._domainkey IN TXT ( {quoted} )"


def make_key(directory: Path, domain: str = "example.com", selector: str = "sel1") -> DkimKey:
    """Generate a 2048-bit key with opendkim-genkey into ``directory``."""
    subprocess.run(
        ["opendkim-genkey", "-b", "2048", "-d", domain, "-s", selector, "-D", str(directory)],
        check=True,
        capture_output=True,
    )
    txt = (directory / f"{selector}.txt").read_text()
    record = "".join(re.findall(r'"([^"]*)"', txt))
    return DkimKey(domain, selector, directory / f"{selector}.private", record)


class OpenDkim(Peer):
    """A running opendkim in mode ``s`` (sign with ``key``) or ``v`` (verify).

    A verifier finds public keys in ``dns`` when given (``Nameservers``), otherwise in a
    TestPublicKeys file holding ``key``'s record.
    """

    def __init__(
        self,
        workdir: Path,
        mode: str,
        key: DkimKey,
        dns: DnsServer | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in ("s", "v"):
            raise ValueError(f"opendkim mode must be 's' or 'v', got {mode!r}")
        self.workdir = workdir
        self.mode = mode
        self.key = key
        self.dns = dns
        self.extra = dict(extra or {})
        self.port = free_port()
        self.daemon: Daemon | None = None

    @property
    def milter(self) -> str:
        """The milter address as Postfix's smtpd_milters spells it."""
        return f"inet:127.0.0.1:{self.port}"

    def config(self) -> dict[str, str]:
        """The opendkim.conf settings."""
        conf = {
            "Syslog": "no",  # opendkim logs only to syslog, and there is no /dev/log here
            "Background": "no",
            "Socket": f"inet:{self.port}@127.0.0.1",
            "PidFile": str(self.workdir / "opendkim.pid"),
            "Mode": self.mode,
            "RequireSafeKeys": "false",  # keys under /tmp would make it refuse to start
            "Canonicalization": "relaxed/simple",
            "AuthservID": "mx.pf.test",
        }
        if self.mode == "s":
            conf |= {
                "Domain": self.key.domain,
                "Selector": self.key.selector,
                "KeyFile": str(self.key.private_key),
                "InternalHosts": "127.0.0.1",
            }
        else:
            conf["AlwaysAddARHeader"] = "yes"
            if self.dns is not None:
                conf["Nameservers"] = f"{self.dns.host}@{self.dns.port}"
            else:
                keys = self.workdir / "testkeys"
                keys.write_text(f"{self.key.dns_name} {self.key.record}\n")
                conf["TestPublicKeys"] = str(keys)
        return conf | self.extra

    def start(self) -> OpenDkim:
        """Write opendkim.conf, start opendkim and wait until it answers OPTNEG."""
        conf = self.workdir / "opendkim.conf"
        conf.write_text("".join(f"{k} {v}\n" for k, v in self.config().items()))
        self.daemon = start_daemon(
            f"opendkim-{self.mode}",
            ["opendkim", "-x", str(conf)],
            workdir=self.workdir,
            probe=lambda: optneg_probe(self.milter),
            grace=0.5,  # libmilter notices SIGTERM only after a poll timeout of up to 5 s
            stop_signal=signal.SIGTERM,
        )
        return self


OpenDkimFactory = Callable[..., OpenDkim]
"""``opendkim_factory(mode, key=None, dns=None, extra=None) -> OpenDkim`` (started)."""


@pytest.fixture(scope="session")
def dkim_key(peer_dirs: PeerDirs) -> DkimKey:
    """A 2048-bit key for ``sel1._domainkey.example.com``."""
    return make_key(peer_dirs.new("dkim-key"))


@pytest.fixture(scope="session")
def opendkim_factory(peer_dirs: PeerDirs, dkim_key: DkimKey) -> Iterator[OpenDkimFactory]:
    """Start opendkim instances (``mode`` "s" or "v"); all are stopped at the end of the session."""
    started: list[OpenDkim] = []

    def factory(
        mode: str,
        key: DkimKey | None = None,
        dns: DnsServer | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> OpenDkim:
        instance = OpenDkim(peer_dirs.new(f"opendkim-{mode}"), mode, key or dkim_key, dns, extra)
        started.append(instance.start())
        return instance

    yield factory
    stop_all(instance.daemon for instance in started if instance.daemon is not None)


@pytest.fixture(scope="session")
def opendkim_signer(opendkim_factory: OpenDkimFactory) -> OpenDkim:
    """An opendkim that signs mail from 127.0.0.1 for example.com with ``dkim_key``."""
    return opendkim_factory("s")


@pytest.fixture(scope="session")
def opendkim_verifier(opendkim_factory: OpenDkimFactory) -> OpenDkim:
    """An opendkim that verifies signatures (``dkim_key`` via TestPublicKeys) and always adds
    Authentication-Results."""
    return opendkim_factory("v")
