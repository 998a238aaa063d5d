"""spamd on loopback with the Debian rules and no network tests, over TCP and a unix socket."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tests.peers.ports import free_port
from tests.peers.process import SocketDaemon, make_dir, start_daemon

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
"""The GTUBE line: SpamAssassin scores a message containing it 1000."""

LOCAL_CF = """use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
"""


class Spamd(SocketDaemon):
    """A running spamd: ``host``/``port`` for TCP, ``socket_path`` for the unix socket."""


def _pong(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0) as sock:
        sock.settimeout(2.0)
        sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
        return b"PONG" in sock.recv(64)


def start_spamd(workdir: Path) -> Spamd:
    """Start spamd (two children, ``--local``) as nobody; wait until it answers PING."""
    site = make_dir(workdir / "site")
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)
    (site / "local.cf").write_text(LOCAL_CF)
    home = make_dir(workdir / "home", owner="nobody")
    port = free_port()
    sock = workdir / "spamd.sock"
    log = workdir / "spamd.log"
    make_dir(workdir, owner="nobody")
    daemon = start_daemon(
        "spamd",
        [
            "spamd",
            f"--listen=127.0.0.1:{port}",
            f"--listen={sock}",
            "--socketmode=0666",
            "--local",
            "--nouser-config",
            "--max-children=2",
            f"--pidfile={workdir / 'spamd.pid'}",
            f"--syslog={log}",
            f"--siteconfigpath={site}",
            f"--helper-home-dir={home}",
        ],
        workdir=workdir,
        probe=lambda: _pong("127.0.0.1", port) and sock.exists(),
        user="nobody",
        logs=[log],
        timeout=30.0,
        grace=3.0,
    )
    return Spamd(daemon, "127.0.0.1", port, sock, log)
