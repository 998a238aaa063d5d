"""``python -m tests.fuzz [--seconds N] [TARGET ...]``: fuzz each target for its share of N s.

Each target runs in its own process (atheris/libFuzzer own the process), with a corpus
directory under ``.fuzz/`` kept between runs; a crash leaves its input in ``.fuzz/crashes`` and
the command exits non-zero.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(".fuzz")
TARGETS = ("smtp_command", "data_reader", "milter_frames", "policy_requests")
"""The targets of `tests.fuzz.targets` (named here: the runner does not import atheris)."""


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=int, default=600, help="the whole budget")
    parser.add_argument("targets", nargs="*", help=f"from {', '.join(TARGETS)} (default: all)")
    args = parser.parse_args()
    args.targets = args.targets or list(TARGETS)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target: {', '.join(sorted(unknown))}")
    share = max(args.seconds // len(args.targets), 1)
    failed = []
    for name in args.targets:
        corpus = ROOT / "corpus" / name
        corpus.mkdir(parents=True, exist_ok=True)
        crashes = ROOT / "crashes"
        crashes.mkdir(parents=True, exist_ok=True)
        print(f"fuzzing {name} for {share} s", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.run", name, str(corpus),
             f"-max_total_time={share}", f"-artifact_prefix={crashes}/{name}-",
             "-rss_limit_mb=2048", "-print_final_stats=1"],
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"crashed: {', '.join(failed)} (inputs in {ROOT / 'crashes'})", file=sys.stderr)
        return 1
    print(f"no crash in {len(args.targets)} targets, {share} s each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
