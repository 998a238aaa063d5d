"""Benchmarks: mailgate against smtp-sink and a minimal relay, measured in the same run.

`python -m tests.bench [--quick]` runs them; `test_bench_smoke.py` is the short CI check.
"""
