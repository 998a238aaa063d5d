"""The fuzzers run in CI for one minute (``make fuzz`` runs them longer): no target crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_one_minute_of_fuzzing_finds_no_crash(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--seconds", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # One minute of fuzzing; instrumenting the imports first takes seconds on a quiet
        # machine but minutes on a loaded one, so the guard is generous.
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "no crash in 4 targets" in result.stdout
    runs = [line for line in result.stderr.splitlines() if "number_of_executed_units" in line]
    assert len(runs) == 4 and all(int(line.split()[-1]) > 1000 for line in runs), runs
