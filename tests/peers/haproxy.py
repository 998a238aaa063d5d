"""HAProxy on loopback in TCP mode, in front of an SMTP backend, sending PROXY v1 and v2.

Each `Frontend` is one listening port that hands every connection to one backend server with
``send-proxy`` (v1) or ``send-proxy-v2``. Runs in the foreground as root (no ``user``,
``chroot`` or ``daemon`` lines: Debian's /etc/haproxy is not used) and is stopped by its PID.
Readiness is probed on the stats socket: a connect probe on a frontend would open a backend
connection and send a PROXY header followed by nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, start_daemon
from tests.peers.workdir import PeerDirs

HAPROXY = "/usr/sbin/haproxy"

PROXY_OPTIONS = {"off": "", "v1": " send-proxy", "v2": " send-proxy-v2"}
"""The server-line option for each way of announcing the client."""


def preamble(stats_socket: Path) -> str:
    """The ``global`` and ``defaults`` sections every test haproxy shares: TCP mode, a stats
    socket (the readiness probe), tcplog lines on stdout."""
    return (
        "global\n"
        "    maxconn 256\n"
        f"    stats socket {stats_socket} mode 600 level admin\n"
        "    log stdout format raw local0 info\n\n"
        "defaults\n"
        "    mode tcp\n"
        "    log global\n"
        "    option tcplog\n"
        "    timeout connect 2s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
    )


def stats(stats_socket: Path, command: str) -> str:
    """The stats socket's answer to `command` (``show info``, ``show stat``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(stats_socket))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def start_haproxy(name: str, workdir: Path, config: str, stats_socket: Path) -> Daemon:
    """Write `config` to ``workdir/haproxy.cfg`` and run haproxy in the foreground until its
    stats socket answers ``show info``."""
    config_path = workdir / "haproxy.cfg"
    config_path.write_text(config)
    return start_daemon(
        name,
        [HAPROXY, "-db", "-f", str(config_path)],
        workdir=workdir,
        probe=lambda: "Version:" in stats(stats_socket, "show info"),
        timeout=10.0,
        grace=2.0,
    )


@dataclass(frozen=True, slots=True)
class Frontend:
    """One frontend: clients connect to `port`; HAProxy connects to `backend` (host, port)
    from `source` (empty: the system's choice) and sends a PROXY header of `proxy` (``v1``,
    ``v2``, or ``off`` for none)."""

    name: str
    backend: tuple[str, int]
    proxy: str = "v1"
    source: str = ""
    port: int = 0


class HAProxy(Peer):
    """A running haproxy with one frontend per `Frontend` given."""

    def __init__(self, workdir: Path, frontends: Sequence[Frontend], host: str = "127.0.0.1"):
        self.workdir = workdir
        self.host = host
        self.frontends = {
            f.name: Frontend(f.name, f.backend, f.proxy, f.source, f.port or free_port(host))
            for f in frontends
        }
        self.stats_socket = workdir / "haproxy.sock"
        self.daemon: Daemon | None = None

    def port(self, name: str) -> int:
        """The port clients connect to for frontend `name`."""
        return self.frontends[name].port

    def config(self) -> str:
        """The whole haproxy.cfg."""
        parts = [preamble(self.stats_socket)]
        for f in self.frontends.values():
            source = f" source {f.source}" if f.source else ""
            parts.append(
                f"\nfrontend {f.name}\n"
                f"    bind {self.host}:{f.port}\n"
                f"    default_backend {f.name}_backend\n"
                f"\nbackend {f.name}_backend\n"
                f"    server mta {f.backend[0]}:{f.backend[1]}{PROXY_OPTIONS[f.proxy]}{source}\n"
            )
        return "".join(parts)

    def start(self) -> HAProxy:
        """Write the configuration, start haproxy in the foreground, wait for `show info`."""
        self.daemon = start_haproxy("haproxy", self.workdir, self.config(), self.stats_socket)
        return self

    def stats(self, command: str) -> str:
        """The stats socket's answer to `command` (``show info``, ``show stat``)."""
        return stats(self.stats_socket, command)

    def log(self) -> str:
        """What haproxy logged so far (its stdout: one line per connection with tcplog)."""
        return self.daemon.output.read_text(errors="replace") if self.daemon else ""


HAProxyFactory = Callable[..., HAProxy]
"""``haproxy_factory(frontends) -> HAProxy`` (started)."""


@pytest.fixture
def haproxy_factory(peer_dirs: PeerDirs) -> Iterator[HAProxyFactory]:
    """Start haproxy instances with the given `Frontend` list; all are stopped after the test."""
    started: list[HAProxy] = []

    def factory(frontends: Sequence[Frontend]) -> HAProxy:
        proxy = HAProxy(peer_dirs.new("haproxy"), frontends)
        started.append(proxy)
        return proxy.start()

    yield factory
    for proxy in started:
        proxy.stop()
