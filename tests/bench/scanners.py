"""`python -m tests.bench.scanners [--smoke]`: what the clamav and spamassassin plugins cost.

One run, side by side: mailgate with clamav alone, spamassassin alone, and both, against real
clamd and spamd, relaying to smtp-sink. 10 KiB messages from smtp-source (rate) and a latency
probe (p50/p99). Target: with both enabled, p50 is at most 1.2 x the slower of the two alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.bench.harness import (
    BenchPlan,
    Measurement,
    SmtpSink,
    System,
    combine,
    format_table,
    mailgate,
    measure_once,
    percentile,
    probe_message,
    size_run,
    timed_transaction,
    wait_for_count,
)
from tests.peers.clamd import Clamd, start_clamd
from tests.peers.process import stop_all
from tests.peers.spamd import Spamd, start_spamd
from tests.peers.workdir import PeerDirs, create_base

PLAN = BenchPlan(
    sizes_kib=(10,), sessions=(1,), target_seconds=4.0, min_messages=10, probe_messages=40
)
SMOKE = BenchPlan(sizes_kib=(10,), sessions=(1,), fixed_messages=5, probe_messages=5, repeats=1)


def scanner_systems(clamd: Clamd, spamd: Spamd) -> list[System]:
    """mailgate three times: clamav only, spamassassin only, both (conf.d order)."""
    clamav = {"50-clamav.toml": f'servers = ["{clamd.unix_address}"]\n'}
    spam = {"60-spamassassin.toml": f'servers = ["{spamd.tcp_address}"]\n'}
    return [
        System("mailgate+clamav", mailgate(clamav)),
        System("mailgate+spamassassin", mailgate(spam)),
        System("mailgate+both", mailgate({**clamav, **spam})),
    ]


@contextlib.contextmanager
def scanners_running() -> Iterator[tuple[Clamd, Spamd]]:
    """A clamd and a spamd for the run, stopped by their PIDs afterwards."""
    base = create_base()
    dirs = PeerDirs(base)
    clamd = start_clamd(dirs.new("clamd"))
    try:
        spamd = start_spamd(dirs.new("spamd"))
    except BaseException:
        clamd.daemon.stop()
        raise
    try:
        yield clamd, spamd
    finally:
        stop_all([clamd.daemon, spamd.daemon])
        shutil.rmtree(base, ignore_errors=True)


def run(plan: BenchPlan) -> list[Measurement]:
    """Every system over the plan, taking turns within each repeat."""
    results: list[Measurement] = []
    with scanners_running() as (clamd, spamd), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        sink = SmtpSink(workdir, "downstream", dump=False)
        systems = scanner_systems(clamd, spamd)
        started: list[System] = []
        try:
            sink.start()
            for system in systems:
                system.start(workdir, sink)
                started.append(system)
            for size_kib in plan.sizes_kib:
                for sessions in plan.sessions:
                    results += _cell(systems, plan, size_kib, sessions)
        finally:
            for system in started:
                system.stop()
            sink.stop()
    return results


def _cell(
    systems: list[System], plan: BenchPlan, size_kib: int, sessions: int
) -> list[Measurement]:
    counts = {s.name: size_run(s, plan, size_kib, sessions)[0] for s in systems}
    runs: dict[str, list[Any]] = {s.name: [] for s in systems}
    for repeat in range(plan.repeats):
        shift = repeat % len(systems)
        for system in systems[shift:] + systems[:shift]:
            runs[system.name].append(
                measure_once(system, size_kib, sessions, counts[system.name], 1)
            )
    cells = [combine(name, size_kib, sessions, cell) for name, cell in runs.items()]
    sink = systems[0].sink
    assert sink is not None
    before = sink.count()
    latencies = asyncio.run(interleaved_latency(systems, size_kib * 1024, plan.probe_messages))
    sent = plan.probe_messages * len(systems)
    lost = sent - (wait_for_count(sink, before + sent) - before)
    for m in cells:
        m.p50_ms = percentile(latencies[m.system], 0.5) * 1000
        m.p99_ms = percentile(latencies[m.system], 0.99) * 1000
        m.sent += plan.probe_messages
        m.delivered += plan.probe_messages
        if lost:
            m.errors.append(f"latency probe: {lost} of {sent} messages not delivered")
    return cells


async def interleaved_latency(
    systems: list[System], size: int, rounds: int
) -> dict[str, list[float]]:
    """One message to each system in turn, `rounds` times: seconds from connect to the 250.

    Taking turns message by message (not run by run) matters on a shared machine: spamd's
    latency follows the load of the moment, and every system sees the same moments.
    """
    message = probe_message(size)
    timings: dict[str, list[float]] = {s.name: [] for s in systems}
    for _ in range(rounds):
        for system in systems:
            timings[system.name].append(await timed_transaction(system.port, message))
    return timings


def verdict(results: list[Measurement]) -> str:
    """The target check: p50 with both against the slower of the two alone."""
    p50 = {m.system: m.p50_ms for m in results}
    slower = max(p50["mailgate+clamav"], p50["mailgate+spamassassin"])
    ratio = p50["mailgate+both"] / slower
    return f"both / slower alone (p50): {ratio:.2f} (target <= 1.2)"


def main(argv: list[str] | None = None) -> int:
    """Run and print the table; exit 1 when a message was lost or the target missed."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scanners", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few messages per system")
    args = parser.parse_args(argv)
    results = run(SMOKE if args.smoke else PLAN)
    print(format_table(results))
    print(verdict(results))
    for m in results:
        for error in m.errors:
            print(f"{m.system}: {error}", file=sys.stderr)
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
