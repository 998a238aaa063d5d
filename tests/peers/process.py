"""Start a test daemon in its own session, wait until it answers, stop it by its own PID."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Probe = Callable[[], bool]
"""A readiness check: returns True once the daemon answers its protocol."""

_running: set[Daemon] = set()


class PeerStartError(RuntimeError):
    """A test daemon exited or did not become ready; the message carries its output and logs."""


class Daemon:
    """A running test daemon: its process, where its output goes, and how to stop it."""

    def __init__(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        output: Path,
        logs: Sequence[Path] = (),
        grace: float = 5.0,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.proc = proc
        self.output = output
        self.logs = tuple(logs)
        self.grace = grace
        self.stop_signal = stop_signal

    @property
    def pid(self) -> int:
        """The daemon's own PID (setpriv and unshare exec, so this is not a wrapper)."""
        return self.proc.pid

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon's PID, if it still runs."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def request_stop(self) -> None:
        """Send the stop signal without waiting, so several daemons can stop in parallel."""
        self.signal(self.stop_signal)

    def stop(self) -> None:
        """Stop the daemon: its stop signal, ``grace`` seconds, then SIGKILL to its own group."""
        self.request_stop()
        try:
            self.proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            # The daemon leads its own session, so its group holds only its own workers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        _running.discard(self)

    def diagnostics(self, tail: int = 60) -> str:
        """The last lines of the daemon's output and log files, for a failure message."""
        parts = [f"{self.name} (pid {self.pid}, exit status {self.proc.poll()})"]
        for path in (self.output, *self.logs):
            parts.append(f"--- {path} ---\n{read_tail(path, tail)}")
        return "\n".join(parts)


class Peer:
    """Base of the peer wrappers: holds the started `Daemon` and stops it by its own PID."""

    daemon: Daemon | None = None

    def stop(self) -> None:
        """Stop the daemon by its PID (stop signal, then SIGKILL); a second call does nothing."""
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


@dataclass
class SocketDaemon:
    """A running daemon that listens on TCP (`host`, `port`) and on a unix socket."""

    daemon: Daemon
    host: str
    port: int
    socket_path: Path
    log: Path

    @property
    def tcp_address(self) -> str:
        """The TCP address as the plugins' ``servers`` settings spell it."""
        return f"{self.host}:{self.port}"

    @property
    def unix_address(self) -> str:
        """The unix socket as the plugins' ``servers`` settings spell it."""
        return f"unix:{self.socket_path}"


def read_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def as_user(argv: Sequence[str], user: str, group: str | None = None) -> list[str]:
    """Wrap ``argv`` in setpriv so it runs as ``user``; setpriv execs, keeping the PID."""
    gid = group if group is not None else _primary_group(user)
    return ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", *argv]


def _primary_group(user: str) -> str:
    import grp
    import pwd

    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def start_daemon(
    name: str,
    argv: Sequence[str],
    *,
    workdir: Path,
    probe: Probe,
    user: str | None = None,
    group: str | None = None,
    logs: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 15.0,
    grace: float = 5.0,
    stop_signal: int = signal.SIGTERM,
) -> Daemon:
    """Start ``argv`` as a session leader and return once ``probe`` succeeds.

    stdout and stderr go to ``workdir/<name>.out``. If the process exits or ``timeout`` passes
    first, it is stopped and PeerStartError carries its output and the ``logs`` files.
    """
    command = as_user(argv, user, group) if user is not None else list(argv)
    output = workdir / f"{name}.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
            env=dict(env) if env is not None else None,
        )
    daemon = Daemon(name, proc, output, logs, grace=grace, stop_signal=stop_signal)
    _running.add(daemon)
    wait_ready(daemon, probe, timeout)
    return daemon


def wait_ready(daemon: Daemon, probe: Probe, timeout: float) -> None:
    """Poll ``probe`` until it succeeds; stop the daemon and raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if not daemon.running():
            raise PeerStartError(f"{daemon.name} exited during start-up\n{daemon.diagnostics()}")
        if _probe_ok(probe):
            return
        if time.monotonic() > deadline:
            daemon.stop()
            raise PeerStartError(
                f"{daemon.name} not ready after {timeout:.1f}s\n{daemon.diagnostics()}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _probe_ok(probe: Probe) -> bool:
    try:
        return probe()
    except OSError:
        return False


def stop_all(daemons: Iterable[Daemon]) -> None:
    """Stop several daemons in parallel: signal all first, then wait for each."""
    pending = [d for d in daemons if d is not None]
    for daemon in pending:
        daemon.request_stop()
    for daemon in pending:
        daemon.stop()


def banner_probe(host: str, port: int, expect: bytes = b"220") -> Probe:
    """A probe that connects and checks the greeting starts with ``expect`` (SMTP, LMTP)."""

    def probe() -> bool:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            greeting = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
            return greeting.startswith(expect)

    return probe


def connect_probe(host: str, port: int) -> Probe:
    """A probe that only checks a TCP connection is accepted."""

    def probe() -> bool:
        with socket.create_connection((host, port), timeout=1.0):
            return True

    return probe


def make_dir(path: Path, owner: str | None = None, mode: int = 0o755) -> Path:
    """Create ``path`` (and parents) traversable by daemons that drop to another user."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None:
        user, _, group = owner.partition(":")
        shutil.chown(path, user, group or _primary_group(user))
    return path


@atexit.register
def _stop_leftovers() -> None:
    # A crashed fixture must not leave daemons behind after pytest exits.
    stop_all(list(_running))
