"""A throwaway redis-server on loopback: no persistence, its own port, stopped by its PID.

Runs in the foreground as ``nobody`` with a config written into its work directory
(``save ""``, ``appendonly no``: nothing is written to disk), the log on stdout. Readiness is
``PING`` answered with ``PONG`` (``redis-cli``). `stop` and `start` again on the same port let a
test take Redis away in the middle and bring it back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, make_dir, start_daemon
from tests.peers.workdir import PeerDirs

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


class Redis(Peer):
    """A redis-server on ``host``:``port``; `url` is what the plugins' ``redis`` setting takes."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1") -> None:
        self.workdir = make_dir(workdir, owner="nobody")
        self.host = host
        self.port = free_port(host)
        self.daemon: Daemon | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def config(self) -> str:
        """The whole redis.conf."""
        return (
            f"bind {self.host}\n"
            f"port {self.port}\n"
            "protected-mode no\n"
            "daemonize no\n"
            "supervised no\n"
            'pidfile ""\n'
            f"dir {self.workdir}\n"
            'logfile ""\n'
            'save ""\n'
            "appendonly no\n"
            "databases 16\n"
        )

    def start(self) -> Redis:
        """Write the configuration and start redis-server; return once it answers PING."""
        conf = self.workdir / "redis.conf"
        conf.write_text(self.config())
        self.daemon = start_daemon(
            "redis",
            [REDIS_SERVER, str(conf)],
            workdir=self.workdir,
            user="nobody",
            group="nogroup",
            probe=self._ping,
            timeout=10.0,
            grace=2.0,
        )
        return self

    def _ping(self) -> bool:
        return self.cli("ping") == "PONG"

    def cli(self, *args: str) -> str:
        """Run one redis-cli command; its output without the final newline."""
        argv = [REDIS_CLI, "-h", self.host, "-p", str(self.port), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.rstrip("\n")

    def keys(self, pattern: str = "*") -> list[str]:
        """The keys matching `pattern` (KEYS: fine for a test's handful)."""
        out = self.cli("--raw", "keys", pattern)
        return sorted(line for line in out.splitlines() if line)

    def log(self) -> str:
        """What redis-server printed so far."""
        return self.daemon.output.read_text(errors="replace") if self.daemon else ""


@pytest.fixture
def redis_server(peer_dirs: PeerDirs) -> Iterator[Redis]:
    """A fresh redis-server for one test (empty; the test may stop and start it again)."""
    server = Redis(peer_dirs.new("redis")).start()
    yield server
    server.stop()
