"""HAProxy on loopback as a TLS terminator: TLS in on one port, plain TCP out to one backend.

For the milter bridge's ``tls = true``: a real milter (opendkim, ...) behind it is a milter
reached over TLS, as one on another host would be. The server certificate is given as (cert,
key) PEM files; with `client_ca`, a client certificate signed by it is required.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.haproxy import preamble, start_haproxy
from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer
from tests.peers.workdir import PeerDirs


class TlsTerminator(Peer):
    """A running haproxy: TLS on ``127.0.0.1:port``, plain TCP to `backend`."""

    def __init__(
        self,
        workdir: Path,
        backend: tuple[str, int],
        certificate: tuple[str, str],
        client_ca: str = "",
    ) -> None:
        self.workdir = workdir
        self.backend = backend
        self.port = free_port("127.0.0.1")
        self.pem = workdir / "server.pem"
        cert, key = certificate
        self.pem.write_text(Path(cert).read_text() + Path(key).read_text())
        self.pem.chmod(0o600)
        self.client_ca = client_ca
        self.stats_socket = workdir / "haproxy.sock"
        self.daemon: Daemon | None = None

    @property
    def address(self) -> str:
        """The milter address of the TLS side, as the bridge spells it."""
        return f"inet:127.0.0.1:{self.port}"

    def config(self) -> str:
        """The whole haproxy.cfg."""
        verify = f" ca-file {self.client_ca} verify required" if self.client_ca else ""
        return (
            preamble(self.stats_socket) + "\n"
            "frontend tls\n"
            f"    bind 127.0.0.1:{self.port} ssl crt {self.pem}{verify}\n"
            "    default_backend plain\n\n"
            "backend plain\n"
            f"    server milter {self.backend[0]}:{self.backend[1]}\n"
        )

    def start(self) -> TlsTerminator:
        """Write the configuration, start haproxy in the foreground, wait for its stats socket."""
        self.daemon = start_haproxy("haproxy-tls", self.workdir, self.config(), self.stats_socket)
        return self

    def log(self) -> str:
        """What haproxy logged so far (one line per connection, handshake failures too)."""
        return self.daemon.output.read_text(errors="replace") if self.daemon else ""


TlsTerminatorFactory = Callable[..., TlsTerminator]
"""``factory(backend, certificate, client_ca="") -> TlsTerminator`` (started)."""


@pytest.fixture
def tls_terminator_factory(peer_dirs: PeerDirs) -> Iterator[TlsTerminatorFactory]:
    """Start TLS terminators; all are stopped after the test."""
    started: list[TlsTerminator] = []

    def factory(
        backend: tuple[str, int], certificate: tuple[str, str], client_ca: str = ""
    ) -> TlsTerminator:
        terminator = TlsTerminator(peer_dirs.new("tls-terminator"), backend, certificate, client_ca)
        started.append(terminator)
        return terminator.start()

    yield factory
    for terminator in started:
        terminator.stop()
