"""spamass-milter on loopback, backed by a private spamd (stock rules, no network tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.milter_probe import optneg_probe
from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, start_daemon, stop_all
from tests.peers.spamd import Spamd, start_spamd
from tests.peers.workdir import PeerDirs


class SpamassMilter(Peer):
    """A running spamass-milter (``-m``: headers only, body untouched) that rejects mail
    scoring ``reject_score`` or more (GTUBE) with ``550 5.7.1 Blocked by SpamAssassin``.
    It listens on a loopback TCP port, or with ``unix=True`` on a unix socket instead."""

    def __init__(
        self, workdir: Path, spamd: Spamd, reject_score: int = 15, *, unix: bool = False
    ) -> None:
        self.workdir = workdir
        self.spamd = spamd
        self.reject_score = reject_score
        self.port = free_port()
        self.socket_path = workdir / "spamass-milter.sock" if unix else None
        self.daemon: Daemon | None = None

    @property
    def milter(self) -> str:
        """The milter address as Postfix's smtpd_milters spells it."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        return f"inet:127.0.0.1:{self.port}"

    @property
    def _listen(self) -> str:
        # The same address as libmilter's smfi_setconn spells it (spamass-milter -p).
        return self.milter if self.socket_path is not None else f"inet:{self.port}@127.0.0.1"

    def start(self) -> SpamassMilter:
        """Start spamass-milter in the foreground, wait until it answers OPTNEG."""
        # No "-i 127.0.0.1" (Debian's default): it would skip all test mail, which is local.
        argv = [
            "spamass-milter",
            "-p",
            self._listen,
            "-P",
            str(self.workdir / "spamass-milter.pid"),
            "-m",
            "-r",
            str(self.reject_score),
            "--",
            "-d",
            self.spamd.host,
            "-p",
            str(self.spamd.port),
        ]
        self.daemon = start_daemon(
            "spamass-milter",
            argv,
            workdir=self.workdir,
            probe=lambda: optneg_probe(self.milter),
            grace=0.5,  # libmilter notices SIGTERM only after a poll timeout of up to 5 s
        )
        if self.socket_path is not None:
            # spamass-milter has no socket mode option, and Postfix's smtpd runs as postfix.
            self.socket_path.chmod(0o666)
        return self


@pytest.fixture(scope="session")
def spamass_milter(peer_dirs: PeerDirs) -> Iterator[SpamassMilter]:
    """A session-wide spamass-milter with its own spamd (``spamass_milter.spamd``)."""
    spamd = start_spamd(peer_dirs.new("spamd-for-milter"))
    instance = SpamassMilter(peer_dirs.new("spamass-milter"), spamd).start()
    yield instance
    stop_all([d for d in (instance.daemon, spamd.daemon) if d is not None])
