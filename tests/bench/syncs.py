"""Syncs per message: ``python -m tests.bench.syncs [--systems a,b] [--messages N]``.

Each system is started with its own sink; strace (``-f -c``, fsync and fdatasync) is attached
to the system's whole process tree; smtp-source sends N messages of 10 KiB over 20 sessions;
once the sink has them all, strace's counts are read. A separate run from the timed one:
strace slows every process it follows.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import time
from pathlib import Path

from .harness import SmtpSink, process_tree, run_smtp_source, running_systems, wait_for_count

_CALLS = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$", re.M)


def count_syncs(pid: int, port: int, sink: SmtpSink, messages: int, out: Path) -> int:
    """fsync + fdatasync calls by `pid`'s tree while `messages` are sent and delivered."""
    args = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out)]
    for member in process_tree(pid):
        # Every thread: strace -p follows one, and aiosqlite syncs from its own threads.
        for task in Path(f"/proc/{member}/task").iterdir():
            args += ["-p", task.name]
    tracer = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    before = sink.count()
    run_smtp_source(port, 20, messages, 10240)
    wait_for_count(sink, before + messages, 60.0)
    time.sleep(1.0)  # the last delivery results
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    return sum(int(m.group(1)) for m in _CALLS.finditer(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.syncs", description=__doc__)
    parser.add_argument("--systems", default="mailgate,mailgate-queue,postfix-queue")
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    names = [n for n in args.systems.split(",") if n]
    with running_systems(names, dump=False) as systems:
        print("| system | messages | fsync+fdatasync | syncs/msg |\n|---|---:|---:|---:|")
        for system in systems:
            assert system.sink is not None and system.log is not None
            out = system.log.parent / f"strace-{system.name}.txt"
            syncs = count_syncs(system.pid, system.port, system.sink, args.messages, out)
            print(f"| {system.name} | {args.messages} | {syncs} | {syncs / args.messages:.2f} |")


if __name__ == "__main__":
    main()
