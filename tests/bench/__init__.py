"""Benchmarks: mailgate against smtp-sink and a minimal relay, measured in the same run.

`python -m tests.bench [--quick]` runs them; `test_bench_smoke.py` is the short CI check.
Every `mailgate serve` here is one process unless its system asks for workers (``mailgate-w2``).
"""

import os

os.environ.setdefault("MAILGATE_WORKERS", "1")
