"""`python -m tests.bench [--quick|--smoke]`: run the benchmark and print the table."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from dataclasses import asdict, replace

from .harness import (
    COMPARE_PLAN,
    COMPARE_SYSTEMS,
    DEFAULT_SYSTEMS,
    SYSTEMS,
    BenchPlan,
    format_compare_targets,
    format_comparison,
    format_table,
    format_targets,
    format_workers_target,
    run_benchmark,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: plan, systems and output."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one ~1 s run per cell")
    mode.add_argument("--smoke", action="store_true", help="20 messages per cell (CI check)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="issue 14's table: smtp-sink, Postfix, Haraka, mailgate and the minimal relay "
        "at 1 and 10 KiB, 20 sessions (with --smoke: 20 messages per cell)",
    )
    parser.add_argument(
        "--systems",
        default=None,
        help=f"comma-separated, from: {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--sizes", type=_ints, help="message sizes in KiB, e.g. 1,10,100")
    parser.add_argument("--sessions", type=_ints, help="parallel sessions, e.g. 1,20")
    parser.add_argument("--repeats", type=int, help="runs per cell; the table shows medians")
    parser.add_argument("--seconds", type=float, help="target length of one load run")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser.parse_args(argv)


def build_plan(args: argparse.Namespace) -> BenchPlan:
    """The plan for the chosen mode, with any overrides from the command line."""
    plan = BenchPlan.smoke() if args.smoke else BenchPlan.quick() if args.quick else BenchPlan()
    if args.compare:
        plan = replace(plan, sizes_kib=COMPARE_PLAN.sizes_kib, sessions=COMPARE_PLAN.sessions)
    if args.sizes:
        plan = replace(plan, sizes_kib=args.sizes)
    if args.sessions:
        plan = replace(plan, sessions=args.sessions)
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)
    if args.seconds:
        plan = replace(plan, target_seconds=args.seconds)
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when any system lost or failed a message."""
    args = parse_args(argv)
    default = COMPARE_SYSTEMS if args.compare else DEFAULT_SYSTEMS
    names = [name for name in (args.systems or ",".join(default)).split(",") if name]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        sys.exit(f"unknown systems: {', '.join(unknown)}")
    load_before = os.getloadavg()[0]
    results = run_benchmark(
        build_plan(args), names, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    # The machine is shared: the load average says how much else ran during the benchmark.
    load = f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    print(f"\n{stamp}, {machine}, {load}")
    if args.compare:
        print(format_comparison(results))
        print()
        print(format_compare_targets(results))
        print(format_compare_targets(results, "mailgate-w2"))
        print(format_workers_target(results))
    else:
        print(format_table(results))
        print()
        print(format_targets(results))
    for m in results:
        for error in m.errors:
            print(f"{m.system} {m.size_kib} KiB x{m.sessions}: {error}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(m) for m in results], out, indent=1)
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
