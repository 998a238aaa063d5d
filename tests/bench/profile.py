"""Where a system under test spends its time: py-spy samples taken during a load run.

`python -m tests.bench.profile [--system mailgate] [--size 10] [--sessions 20]` starts the
system, samples it with `py-spy record` while smtp-source sends a few seconds of load, and
prints the hottest functions as `file:function` with their share of the samples: "self" is
time in the function itself, "total" includes what it called.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .harness import BenchPlan, run_smtp_source, running_systems, size_run

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`function (path/to/file.py:12)` as `to/file.py:function` (the line number dropped)."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    parts = Path(match["file"]).parts
    return f"{'/'.join(parts[-2:])}:{match['function']}"


def hotspots(
    collapsed: Iterable[str],
) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Self and total sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # With --subprocesses py-spy puts a `process PID:"cmdline"` frame at the root.
        frames = [frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            frames = ["(no Python frame)"]
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    return own, total, samples


def format_hotspots(
    own: collections.Counter[str], total: collections.Counter[str], samples: int, top: int
) -> str:
    """The top functions by self time and by total time, as two text tables."""
    lines = [f"{samples} samples", "", "self %  function"]
    lines += [f"{100 * n / samples:6.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:7.1f}  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)


def profile(system: str, size_kib: int, sessions: int, seconds: float, top: int) -> str:
    """Sample `system` under smtp-source load and return its hotspots."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    plan = BenchPlan(target_seconds=seconds, max_messages=100_000)
    with (
        running_systems([system], dump=False) as systems,
        tempfile.TemporaryDirectory() as tmp,
    ):
        sut = systems[0]
        messages, _ = size_run(sut, plan, size_kib, sessions)
        out = Path(tmp) / "stacks.txt"
        command = [py_spy, "record", "--pid", str(sut.pid), "--rate", "250", "--format", "raw"]
        command += ["--output", str(out), "--nonblocking", "--subprocesses"]
        sampler = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            run_smtp_source(sut.port, sessions, messages, size_kib * 1024)
        finally:
            sampler.send_signal(2)  # SIGINT: py-spy writes its output and exits
            _, errors = sampler.communicate(timeout=30)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {errors.decode(errors='replace')}")
        own, total, samples = hotspots(out.read_text().splitlines())
    return format_hotspots(own, total, samples, top)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile", description=__doc__)
    parser.add_argument("--system", default="mailgate")
    parser.add_argument("--size", type=int, default=10, help="message size in KiB")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the load run")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(profile(args.system, args.size, args.sessions, args.seconds, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
