"""clamav-milter on a unix socket, backed by a private clamd with the EICAR signatures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.clamd import Clamd, start_clamd
from tests.peers.milter_probe import optneg_probe
from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, start_daemon, stop_all
from tests.peers.workdir import PeerDirs


class ClamavMilter(Peer):
    """A running clamav-milter: rejects EICAR with ``550 5.7.1 Virus found: <name>``, adds
    ``X-Virus-Status: Clean`` to clean mail. It listens on a unix socket, or with ``tcp=True``
    on a loopback TCP port instead."""

    def __init__(self, workdir: Path, clamd: Clamd, *, tcp: bool = False) -> None:
        self.workdir = workdir
        self.clamd = clamd
        self.socket_path = workdir / "milter.sock"
        self.port = free_port() if tcp else None
        self.log = workdir / "clamav-milter.log"
        self.daemon: Daemon | None = None

    @property
    def milter(self) -> str:
        """The milter address as Postfix's smtpd_milters spells it."""
        if self.port is not None:
            return f"inet:127.0.0.1:{self.port}"
        return f"unix:{self.socket_path}"

    @property
    def milter_socket(self) -> str:
        """The same address as clamav-milter.conf's ``MilterSocket`` spells it."""
        if self.port is not None:
            return f"inet:{self.port}@127.0.0.1"
        return self.milter

    def start(self) -> ClamavMilter:
        """Write clamav-milter.conf, start it, wait until it answers OPTNEG."""
        d = self.workdir
        conf = {
            "MilterSocket": self.milter_socket,
            "MilterSocketMode": "666",
            "FixStaleSocket": "yes",
            "Foreground": "yes",
            "PidFile": f"{d}/clamav-milter.pid",
            "TemporaryDirectory": str(d),
            "ClamdSocket": f"unix:{self.clamd.socket_path}",
            "LogFile": str(self.log),
            "LogTime": "yes",
            "LogInfected": "Full",
            "LogClean": "Full",
            "OnClean": "Accept",
            "OnInfected": "Reject",
            "OnFail": "Defer",
            "AddHeader": "Replace",
            "RejectMsg": '"Virus found: %v"',
        }
        path = d / "clamav-milter.conf"
        path.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
        self.daemon = start_daemon(
            "clamav-milter",
            ["clamav-milter", "-c", str(path)],
            workdir=d,
            probe=lambda: optneg_probe(self.milter),
            logs=[self.log],
            grace=0.5,  # libmilter notices SIGTERM only after a poll timeout of up to 5 s
        )
        return self


@pytest.fixture(scope="session")
def clamav_milter(peer_dirs: PeerDirs) -> Iterator[ClamavMilter]:
    """A session-wide clamav-milter with its own clamd (``clamav_milter.clamd``)."""
    clamd = start_clamd(peer_dirs.new("clamd-for-milter"))
    instance = ClamavMilter(peer_dirs.new("clamav-milter"), clamd).start()
    yield instance
    stop_all([d for d in (instance.daemon, clamd.daemon) if d is not None])
