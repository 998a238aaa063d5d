"""opendmarc as a milter, resolving through a test DNS via a private /etc/resolv.conf.

opendmarc has no nameserver option and libresolv cannot use a port other than 53, so it runs in
its own mount namespace where /etc/resolv.conf names a DnsServer on port 53 of a random
127/8 address (free of clashes with other test runs, and with the host's resolver untouched).
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.peers.dns import EXAMPLE_ZONE, DnsServer
from tests.peers.milter_probe import optneg_probe
from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, make_dir, start_daemon
from tests.peers.workdir import PeerDirs


def start_port53_dns() -> DnsServer:
    """A started DnsServer on port 53 of a random 127.x.y.z address (needs root)."""
    for _ in range(20):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
        try:
            return DnsServer(host, 53).start()
        except OSError:
            continue
    raise OSError("no free 127/8 address for a DNS server on port 53")


class OpenDmarc(Peer):
    """A running opendmarc: checks SPF itself, trusts Authentication-Results from mx.pf.test,
    rejects DMARC failures under p=reject with ``550 5.7.1 rejected by DMARC policy``.
    It listens on a loopback TCP port, or with ``unix=True`` on a unix socket instead."""

    def __init__(
        self,
        workdir: Path,
        dns: DnsServer,
        *,
        unix: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        if dns.port != 53:
            raise ValueError("opendmarc's resolver can only ask port 53")
        self.workdir = workdir
        self.dns = dns
        self.port = free_port()
        # opendmarc creates its socket after it has dropped to nobody: a directory of its own.
        self.socket_path = workdir / "socket" / "opendmarc.sock" if unix else None
        self.extra = dict(extra or {})  # opendmarc.conf settings over the defaults below
        self.daemon: Daemon | None = None

    @property
    def milter(self) -> str:
        """The milter address as Postfix's smtpd_milters spells it."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        return f"inet:127.0.0.1:{self.port}"

    def _socket(self) -> dict[str, str]:
        # A unix socket anyone may connect to: Postfix's smtpd runs as postfix.
        if self.socket_path is not None:
            make_dir(self.socket_path.parent, owner="nobody")
            return {"Socket": f"local:{self.socket_path}", "UMask": "000"}
        return {"Socket": f"inet:{self.port}@127.0.0.1"}

    def start(self) -> OpenDmarc:
        """Write the configuration and resolv.conf, start opendmarc, wait for OPTNEG."""
        d = self.workdir
        resolv = d / "resolv.conf"
        resolv.write_text(f"nameserver {self.dns.host}\noptions timeout:1 attempts:1\n")
        ignore = d / "ignore.hosts"
        ignore.write_text("")  # the default ignores 127.0.0.1, which is all test traffic
        conf = (
            self._socket()
            | {
                "PidFile": f"{d}/opendmarc.pid",
                "Background": "false",
                "Syslog": "false",
                "UserID": "nobody",
                "AuthservID": "mx.pf.test",
                "TrustedAuthservIDs": "mx.pf.test",
                "IgnoreHosts": str(ignore),
                "SPFSelfValidate": "true",
                "RejectFailures": "true",
                "RequiredHeaders": "false",
                "FailureReports": "false",
                "PublicSuffixList": "/usr/share/publicsuffix/public_suffix_list.dat",
                "DNSTimeout": "2",
            }
            | self.extra
        )
        path = d / "opendmarc.conf"
        path.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
        inner = (
            f"mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf"
            f" && exec opendmarc -c {shlex.quote(str(path))}"
        )
        # sh and unshare both exec, so the PID held is opendmarc's own.
        self.daemon = start_daemon(
            "opendmarc",
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
            workdir=d,
            probe=lambda: optneg_probe(self.milter),
            grace=0.5,  # libmilter notices SIGTERM only after a poll timeout of up to 5 s
        )
        return self


@pytest.fixture(scope="session")
def opendmarc(peer_dirs: PeerDirs) -> Iterator[OpenDmarc]:
    """A session-wide opendmarc; its DNS (``opendmarc.dns``) serves EXAMPLE_ZONE (SPF allows
    192.0.2.0/24 and 127.0.0.1; DMARC p=reject). Pose as a client IP with XCLIENT."""
    dns = start_port53_dns()
    dns.add_zone(EXAMPLE_ZONE)
    instance = OpenDmarc(peer_dirs.new("opendmarc"), dns).start()
    yield instance
    instance.stop()
    dns.stop()
