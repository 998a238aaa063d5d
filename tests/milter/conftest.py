"""Fixtures for the milter tests: a pymilter reference milter, and a blocking codec client."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.milter import codec as c
from tests.peers.ports import free_port
from tests.peers.process import connect_probe, start_daemon

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pymilter_peer(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The reference pymilter milter (tests/milter/pymilter_peer.py) on a loopback port."""
    port = free_port()
    daemon = start_daemon(
        "pymilter-peer",
        [sys.executable, "-m", "tests.milter.pymilter_peer", f"inet:{port}@127.0.0.1"],
        workdir=tmp_path,
        probe=connect_probe("127.0.0.1", port),
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        grace=0.5,
        stop_signal=signal.SIGKILL,
    )
    yield "127.0.0.1", port
    daemon.stop()


class MtaClient:
    """The MTA side of the protocol, blocking and minimal: for tests only."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = c.FrameDecoder("replies")
        self.pending: list[c.Frame] = []

    def send(self, *frames: c.Frame) -> None:
        """Send frames in one write."""
        self.sock.sendall(b"".join(c.encode(f) for f in frames))

    def read(self) -> c.Frame:
        """The next reply frame."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("milter closed the connection")
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def until_final(self) -> tuple[list[c.Frame], c.Frame]:
        """Actions, then the reply that ends the step."""
        actions: list[c.Frame] = []
        while True:
            frame = self.read()
            if isinstance(
                frame,
                c.Accept | c.Continue | c.Discard | c.Reject | c.Tempfail | c.ReplyCode | c.Skip,
            ):
                return actions, frame
            actions.append(frame)


@pytest.fixture
def mta_client() -> Iterator[type[MtaClient]]:
    """The `MtaClient` class (tests connect it themselves)."""
    yield MtaClient
