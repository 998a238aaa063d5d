"""Fixtures for the plugin tests: real clamd and spamd, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.peers.clamd import Clamd, start_clamd
from tests.peers.spamd import Spamd, start_spamd
from tests.peers.workdir import PeerDirs


@pytest.fixture(scope="session")
def clamd(peer_dirs: PeerDirs) -> Iterator[Clamd]:
    """A clamd with the EICAR signatures, on a TCP port and a unix socket."""
    peer = start_clamd(peer_dirs.new("clamd"))
    yield peer
    peer.daemon.stop()


@pytest.fixture(scope="session")
def spamd(peer_dirs: PeerDirs) -> Iterator[Spamd]:
    """A spamd with the stock rules and no network tests, on a TCP port and a unix socket."""
    peer = start_spamd(peer_dirs.new("spamd"))
    yield peer
    peer.daemon.stop()
