"""A worker: one `App` serving the listening sockets its master bound.

Started by the master as ``python -m mailgate.workers.child`` with the options below; never by
hand. It tells the master ``ready`` and how reloads went, one line at a time on the pipe
``--notify-fd``, takes its reload orders from the pipe ``--control-fd`` (`App.control`), and
ends when the master does (the kernel sends it SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Sequence

from mailgate import event_loop, process
from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.logging import name_process

_PR_SET_PDEATHSIG = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailgate-worker")
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--notify-fd", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--socket", action="append", default=[], metavar="INDEX:FD")
    p.add_argument("--metrics-path")
    p.add_argument("--config")
    p.add_argument("--log-level")
    for name in ("listen", "relay", "milter", "policy"):
        p.add_argument(f"--{name}")
    return p


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM when the master ends, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


async def _reader(fd: int) -> asyncio.StreamReader:
    """A stream over the read end of a pipe."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


def main(argv: Sequence[str] | None = None) -> int:
    """Run worker ``--worker`` until SIGTERM; returns the exit status."""
    from mailgate.app import App

    args = _parser().parse_args(argv)
    _die_with_parent()
    if os.getppid() == 1:
        return 1  # the master is gone already
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the queue wake, before App handles it
    name_process(args.worker)
    addresses = {k: getattr(args, k) for k in ("listen", "relay", "milter", "policy")}
    directory = args.config
    title = [f"mailgate worker {args.worker}"]
    if directory:
        title += ["--config", directory]
    process.set_title(" ".join(title))
    sockets = {}
    for spec in args.socket:
        index, _, fd = spec.partition(":")
        sockets[int(index)] = socket.socket(fileno=int(fd))
    notify_fd = args.notify_fd

    def notify(message: str) -> None:
        with contextlib.suppress(OSError):  # the master is gone; SIGTERM follows
            os.write(notify_fd, message.encode() + b"\n")

    try:
        config = load_config(directory, **addresses)
        app = App(
            directory,
            **addresses,
            config=config,
            log_level=args.log_level,
            worker=args.worker,
            sockets=sockets,
            metrics_path=args.metrics_path,
        )
        app.notify = notify

        async def run() -> None:
            app.control = await _reader(args.control_fd)
            await app.run()

        event_loop.run(run(), config.mailgate.event_loop)
    except ConfigError as exc:
        print(f"mailgate worker {args.worker}: configuration error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mailgate worker {args.worker}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
