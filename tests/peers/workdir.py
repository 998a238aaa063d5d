"""Per-run scratch directories that daemons running as other users can traverse."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.process import make_dir


class PeerDirs:
    """Hands out fresh, uniquely named directories under one base, one per daemon instance."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._counter = itertools.count(1)

    def new(self, name: str, owner: str | None = None) -> Path:
        """A new empty directory ``<base>/<name>-<n>``, mode 0755, owned by ``owner`` if given."""
        return make_dir(self.base / f"{name}-{next(self._counter)}", owner)


def create_base() -> Path:
    """A new base directory in /tmp with mode 0755 (pytest's tmp_path is 0700: daemons that
    drop to nobody or postfix could not reach their files under it)."""
    base = Path(tempfile.mkdtemp(prefix="mailgate-peers-", dir="/tmp"))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="session")
def peer_dirs() -> Iterator[PeerDirs]:
    """Scratch directories for test daemons; removed at the end of the session unless
    MAILGATE_KEEP_PEERS is set (to read daemon logs after a failure)."""
    base = create_base()
    yield PeerDirs(base)
    if not os.environ.get("MAILGATE_KEEP_PEERS"):
        shutil.rmtree(base, ignore_errors=True)
