"""The running server as other processes see it: its title, its pid file, finding it to reload.

``mailgate serve`` is a Python process (``python3 /usr/bin/mailgate``), which ``pidof
mailgate`` does not find; `set_title` renames it ``mailgate serve --config DIR``, so that
``pidof mailgate``, ``ps`` and ``mailgate reload --config DIR`` find it. ``--pid-file`` writes its
pid for service managers and scripts. ``mailgate reload`` checks the configuration first and
signals only when it is good, as ``check-config`` followed by ``kill -HUP`` would.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

TITLE = "mailgate serve"


class ProcessError(Exception):
    """The running server cannot be found, or its pid file cannot be written."""


def title(directory: Path | None, options: list[str]) -> str:
    """The process title: ``mailgate serve --config /abs/DIR`` and the other given options."""
    parts = [TITLE]
    if directory is not None:
        parts += ["--config", str(directory.resolve())]
    return " ".join(parts + options)


def set_title(text: str) -> None:
    """Set the process title (``ps``) and name (``pidof``); nothing without setproctitle.

    Call it from the main thread: its name is the process name, ``mailgate``, which is what
    ``pidof`` compares (the title's first word is not: ``pidof`` takes the last path component
    of the whole title).
    """
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(text)
    setproctitle.setthreadtitle("mailgate")


@contextlib.contextmanager
def pid_file(path: Path | None) -> Iterator[None]:
    """Write this process's pid to `path` for the duration; refuse if another server runs.

    A file naming a process that no longer runs (or is no mailgate) is stale and replaced. The
    file is written to a temporary name and renamed, so a reader never sees it half-written;
    it is removed at exit if it still names this process.
    """
    if path is None:
        yield
        return
    other = read_pid(path)
    if other is not None and other != os.getpid() and _is_mailgate(other):
        raise ProcessError(f"{path}: mailgate already runs as process {other}")
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(f"{os.getpid()}\n")
        temporary.replace(path)
    except OSError as exc:
        raise ProcessError(f"{path}: cannot write the pid file: {exc.strerror}") from None
    try:
        yield
    finally:
        if read_pid(path) == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()


def read_pid(path: Path) -> int | None:
    """The pid in `path`, or None when there is no such file or it holds no number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _is_mailgate(pid: int) -> bool:
    return "mailgate" in _cmdline(pid)


def find_servers(directory: Path | None) -> list[int]:
    """The pids of ``mailgate serve`` processes titled with `directory` (None: without one)."""
    wanted = title(directory, [])
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmdline = _cmdline(int(entry.name))
        if cmdline == wanted or cmdline.startswith(wanted + " --"):
            if directory is None and cmdline.startswith(f"{TITLE} --config "):
                continue
            found.append(int(entry.name))
    return sorted(found)


def signal_reload(directory: Path | None, pid_path: Path | None) -> list[int]:
    """Send SIGHUP to the server named by `pid_path`, or else to those found by `directory`.

    Returns the pids signalled; raises `ProcessError` when there is none to signal.
    """
    if pid_path is not None:
        pid = read_pid(pid_path)
        if pid is None:
            raise ProcessError(f"{pid_path}: no pid file (is mailgate serve --pid-file running?)")
        pids = [pid]
    else:
        pids = find_servers(directory)
        if not pids:
            named = f"{TITLE} --config {directory.resolve()}" if directory else TITLE
            raise ProcessError(f"no running {named!r} found (give --pid-file?)")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise ProcessError(f"process {pid} does not run (a stale pid file?)") from None
        except PermissionError:
            raise ProcessError(f"process {pid}: not allowed to signal it") from None
    return pids
