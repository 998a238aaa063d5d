"""A throwaway PostgreSQL 15 cluster on loopback (trust auth, no fsync) for queue/store tests."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, as_user, make_dir, start_daemon
from tests.peers.workdir import PeerDirs

BIN = Path("/usr/lib/postgresql/15/bin")


class Postgres(Peer):
    """A running PostgreSQL cluster; connect as ``user`` (trust) to ``host``:``port``."""

    user = "test"

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        # initdb and postgres refuse to run as root: the cluster belongs to the postgres user.
        self.workdir = make_dir(workdir, owner="postgres")
        self.data = workdir / "data"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.daemon: Daemon | None = None
        self.durable = durable
        """Keep PostgreSQL's own fsync at commit (benchmarks); tests run without it."""

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection URI for ``database``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def start(self) -> Postgres:
        """initdb a fresh cluster and start postgres; wait until pg_isready says so."""
        initdb = [
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        ]
        done = subprocess.run(as_user(initdb, "postgres"), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        argv = [
            str(BIN / "postgres"),
            "-D",
            str(self.data),
            "-k",
            str(self.workdir),
            "-h",
            self.host,
            "-p",
            str(self.port),
        ]
        if not self.durable:
            argv += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        self.daemon = start_daemon(
            "postgres",
            argv,
            workdir=self.workdir,
            user="postgres",
            probe=self._ready,
            stop_signal=signal.SIGINT,  # "fast shutdown": no waiting for clients
        )
        return self

    def _ready(self) -> bool:
        cmd = [str(BIN / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
        return subprocess.run(cmd, check=False).returncode == 0

    def psql(self, *commands: str, database: str = "postgres") -> str:
        """Run each SQL command with psql (one ``-c`` each, so CREATE DATABASE works); return
        the unaligned, tuples-only output."""
        cmd = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", self.dsn(database)]
        for command in commands:
            cmd += ["-c", command]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


@pytest.fixture(scope="session")
def postgres(peer_dirs: PeerDirs) -> Iterator[Postgres]:
    """A session-wide PostgreSQL; give each test its own database with ``create_database``."""
    instance = Postgres(peer_dirs.new("postgres")).start()
    yield instance
    instance.stop()
