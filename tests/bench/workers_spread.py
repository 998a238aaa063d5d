"""`python -m tests.bench.workers_spread`: SO_REUSEPORT against one shared socket, 2 workers.

For each way of sharing the port, starts `mailgate serve` with two workers relaying to
smtp-sink, sends messages with smtp-source (20 sessions, one connection per message), and
prints the rate, the CPU per message of the whole process tree, and how the connections were
spread over the workers (from the ``session end`` lines each worker logs). Medians of
``--repeats`` runs; run it under the bench lock (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from .harness import SmtpSink, System, cpu_seconds, mailgate, run_smtp_source, wait_for_count

MODES = ("reuseport", "shared")


def sessions_per_worker(log: Path, after: int) -> dict[int, int]:
    """How many ``session end`` lines each worker wrote from line `after` on."""
    counts: dict[int, int] = {}
    for line in log.read_text(errors="replace").splitlines()[after:]:
        if line.startswith("{") and '"session end"' in line:
            worker = json.loads(line).get("worker")
            if isinstance(worker, int):
                counts[worker] = counts.get(worker, 0) + 1
    return counts


def measure(mode: str, size_kib: int, messages: int, repeats: int, workdir: Path) -> str:
    """One table row for `mode`."""
    system = System(f"mailgate-w2-{mode}-{size_kib}", mailgate({}, workers=2, sockets=mode))
    sink = SmtpSink(workdir, f"sink-{mode}-{size_kib}", dump=False)
    sink.start()
    rates, cpus, shares = [], [], []
    try:
        system.start(workdir, sink)
        assert system.log is not None
        for _ in range(repeats):
            mark = len(system.log.read_text(errors="replace").splitlines())
            before, cpu_before = sink.count(), cpu_seconds(system.pid)
            seconds, error = run_smtp_source(system.port, 20, messages, size_kib * 1024)
            if error:
                print(f"{mode}: {error}", file=sys.stderr)
            wait_for_count(sink, before + messages)
            cpus.append((cpu_seconds(system.pid) - cpu_before) * 1000 / messages)
            rates.append(messages / seconds)
            counts = sessions_per_worker(system.log, mark)
            shares.append(max(counts.values(), default=0) / max(sum(counts.values()), 1))
    finally:
        system.stop()
        sink.stop()
    return (
        f"| {mode} | {size_kib} KiB | {statistics.median(rates):,.0f} | "
        f"{statistics.median(cpus):.2f} | {min(shares):.0%}-{max(shares):.0%} |"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure both modes and print the table."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.workers_spread")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1,10")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mailgate-spread-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for mode in MODES:
                rows.append(measure(mode, size, args.messages, args.repeats, Path(tmp)))
    print(f"load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print("| sharing | size | msg/s | CPU ms/msg | busiest worker's share of sessions |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
