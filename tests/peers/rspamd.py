"""rspamd 3.4 as a milter (proxy worker with self_scan) on loopback, without redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.dns import EXAMPLE_ZONE, DnsServer
from tests.peers.milter_probe import optneg_probe
from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, make_dir, start_daemon
from tests.peers.workdir import PeerDirs

TOP_CONF = """\
.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}
logging { type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }
worker "rspamd_proxy" {
    bind_socket = "%(bind)s";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" { default = yes; self_scan = yes; }
}
"""

# The stock list of 9,600 public suffixes costs ~9 s of hyperscan compile at every start.
TINY_TLDS = "com\nnet\norg\ntest\nexample\ninvalid\nlocalhost\n"

# Modules that need redis or the network; left on they only log errors or slow the scan.
DISABLED_MODULES = (
    "rbl",
    "surbl",
    "emails",
    "phishing",
    "fuzzy_check",
    "asn",
    "neural",
    "ratelimit",
    "greylist",
    "replies",
    "reputation",
    "url_redirector",
    "history_redis",
    "rspamd_update",
    "dcc",
    "p0f",
)


class Rspamd(Peer):
    """A running rspamd whose proxy worker speaks milter on ``milter``; DNS goes to ``dns``.
    The milter is on a loopback TCP port, or with ``unix=True`` on a unix socket instead."""

    def __init__(self, workdir: Path, dns: DnsServer, *, unix: bool = False) -> None:
        self.workdir = workdir
        self.dns = dns
        self.port = free_port()
        self.socket_path = workdir / "run" / "milter.sock" if unix else None
        self.log = workdir / "log" / "rspamd.log"
        self.daemon: Daemon | None = None

    @property
    def milter(self) -> str:
        """The milter address as Postfix's smtpd_milters spells it."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        return f"inet:127.0.0.1:{self.port}"

    @property
    def _bind_socket(self) -> str:
        # rspamd's spelling; the socket's mode lets Postfix's smtpd (user postfix) connect.
        if self.socket_path is not None:
            return f"{self.socket_path} mode=0666"
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        d = self.workdir
        for sub in ("run", "db", "log"):
            make_dir(d / sub, owner="nobody:nogroup")
        local = make_dir(d / "local.d")
        (d / "rspamd.conf").write_text(TOP_CONF % {"bind": self._bind_socket})
        (d / "tld.dat").write_text(TINY_TLDS)
        (local / "options.inc").write_text(
            f'dns {{ nameserver = ["{self.dns.host}:{self.dns.port}"]; timeout = 0.5s; '
            "retransmits = 1; }\n"
            f'url_tld = "{d}/tld.dat";\nlocal_addrs = [];\n'
        )
        (local / "milter_headers.conf").write_text(
            'use = ["x-spamd-result", "x-spam-status", "authentication-results"];\n'
            "skip_local = false;\n"
        )
        for module in DISABLED_MODULES:
            (local / f"{module}.conf").write_text("enabled = false;\n")

    def start(self) -> Rspamd:
        """Write the configuration, start rspamd as nobody, wait until the milter answers."""
        self._write_config()
        d = self.workdir
        argv = [
            "rspamd",
            "-f",
            "-c",
            str(d / "rspamd.conf"),
            f"--var=LOCAL_CONFDIR={d}",
            f"--var=RUNDIR={d}/run",
            f"--var=DBDIR={d}/db",
            f"--var=LOGDIR={d}/log",
        ]
        # The port opens before the worker is ready: only an answered OPTNEG means ready.
        self.daemon = start_daemon(
            "rspamd",
            argv,
            workdir=d,
            user="nobody",
            group="nogroup",
            probe=lambda: optneg_probe(self.milter),
            logs=[self.log],
            timeout=30.0,
            grace=3.0,
        )
        return self


@pytest.fixture(scope="session")
def rspamd(peer_dirs: PeerDirs) -> Iterator[Rspamd]:
    """A session-wide rspamd milter. Its DNS (``rspamd.dns``) serves EXAMPLE_ZONE; add records
    with ``rspamd.dns.add_records(...)`` for SPF, DKIM or DMARC cases."""
    dns = DnsServer().start()
    dns.add_zone(EXAMPLE_ZONE)
    instance = Rspamd(peer_dirs.new("rspamd"), dns).start()
    yield instance
    instance.stop()
    dns.stop()
