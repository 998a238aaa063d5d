"""clamd on loopback with a two-signature EICAR database, over TCP and a unix socket."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from tests.peers.ports import free_port
from tests.peers.process import SocketDaemon, start_daemon

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
"""The EICAR test file: every antivirus reports it, it harms nothing."""

STREAM_MAX_LENGTH = 4 * 1024 * 1024
"""clamd's StreamMaxLength in the test instance: small, so the limit is cheap to reach."""


class Clamd(SocketDaemon):
    """A running clamd: ``host``/``port`` for TCP, ``socket_path`` for the unix socket."""


def write_signatures(db: Path) -> None:
    """The EICAR file as a whole-file MD5 (.hdb) and as a byte pattern anywhere (.ndb)."""
    db.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(EICAR).hexdigest()
    (db / "test.hdb").write_text(f"{digest}:{len(EICAR)}:Eicar-Test-Signature\n")
    (db / "test.ndb").write_text(f"Eicar-Test-Signature-NDB:0:*:{EICAR.hex()}\n")


def _ping(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        sock.connect(str(path))
        sock.sendall(b"zPING\0")
        return sock.recv(16) == b"PONG\0"


def start_clamd(workdir: Path) -> Clamd:
    """Start clamd in `workdir` (traversable by nobody) and wait for PONG on its socket."""
    write_signatures(workdir / "db")
    port = free_port()
    sock = workdir / "clamd.sock"
    log = workdir / "clamd.log"
    (workdir / "clamd.conf").write_text(
        "\n".join(
            [
                "Foreground yes",
                f"LogFile {log}",
                f"PidFile {workdir / 'clamd.pid'}",
                f"DatabaseDirectory {workdir / 'db'}",
                f"TemporaryDirectory {workdir}",
                f"LocalSocket {sock}",
                "LocalSocketMode 666",
                "FixStaleSocket yes",
                f"TCPSocket {port}",
                "TCPAddr 127.0.0.1",
                "MaxThreads 4",
                "SelfCheck 0",
                f"StreamMaxLength {STREAM_MAX_LENGTH}",
                "",
            ]
        )
    )
    daemon = start_daemon(
        "clamd",
        ["clamd", "-c", str(workdir / "clamd.conf")],
        workdir=workdir,
        probe=lambda: _ping(sock),
        logs=[log],
        grace=3.0,
    )
    return Clamd(daemon, "127.0.0.1", port, sock, log)
