"""Smoke run of the rivals in issue 14's comparison: Postfix and Haraka relaying to smtp-sink.

Like test_bench_smoke, not a timed test: it proves that `python -m tests.bench --compare`
measures real systems that relay every message whole, and that its table and verdicts are
sound. Haraka is installed into the bench's cache on first use (node and npm must be there).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from .haraka import HARAKA_VERSION, install_haraka, installed_version
from .harness import (
    COMPARE_PLAN,
    COMPARE_TARGETS,
    BenchPlan,
    Measurement,
    System,
    format_compare_targets,
    format_comparison,
    format_workers_target,
    run_benchmark,
    workers_ceiling,
)

pytestmark = [pytest.mark.bench, pytest.mark.peer]

RIVALS = ("postfix", "haraka")
SMOKE_COMPARE = replace(
    BenchPlan.smoke(),
    sizes_kib=COMPARE_PLAN.sizes_kib,
    sessions=COMPARE_PLAN.sessions,
    fixed_messages=100,
)
"""100 messages a cell, not the smoke plan's 20: /proc counts CPU per process in 10 ms ticks,
and Postfix spreads 20 messages over some 25 processes (one smtpd a session), each of which
may gain less than a tick; with 20, a CI run read 0 for both of Postfix's cells."""


@pytest.fixture(scope="module")
def compare_run() -> tuple[list[Measurement], dict[str, list[bytes]], dict[str, int]]:
    """One smoke run of the rivals and mailgate, with what each delivered to its sink and
    how many reverse lookups Haraka sent to its loopback DNS server."""
    delivered: dict[str, list[bytes]] = {}
    lookups: dict[str, int] = {}

    def collect(systems: list[System]) -> None:
        for system in systems:
            assert system.sink is not None
            delivered[system.name] = system.sink.messages()
            dns = getattr(system, "dns", None)
            if dns is not None:
                lookups[system.name] = sum(1 for q in dns.queries if q.rdtype == "PTR")

    results = run_benchmark(SMOKE_COMPARE, (*RIVALS, "mailgate"), dump=True, inspect=collect)
    return results, delivered, lookups


def test_every_rival_delivers_every_message_with_rate_latency_and_cpu(
    compare_run: tuple[list[Measurement], dict[str, list[bytes]], dict[str, int]],
) -> None:
    results, _, _ = compare_run
    assert {(m.system, m.size_kib) for m in results} == {
        (name, size) for name in (*RIVALS, "mailgate") for size in COMPARE_PLAN.sizes_kib
    }
    for m in results:
        assert m.errors == [], (m.system, m.size_kib)
        assert m.sent == (SMOKE_COMPARE.fixed_messages or 0) + SMOKE_COMPARE.probe_messages
        assert m.delivered == m.sent, (m.system, m.size_kib)
        assert m.rate > 0
        assert 0 < m.p50_ms <= m.p95_ms <= m.p99_ms
        assert m.peak_rss_mib > 1


def test_cpu_counts_every_process_of_postfix_and_haraka(
    compare_run: tuple[list[Measurement], dict[str, list[bytes]], dict[str, int]],
) -> None:
    """Across both cells each rival used measurable CPU (clock ticks are 10 ms, counted per
    process: see `SMOKE_COMPARE`), and the resident memory is that of several processes."""
    results, _, _ = compare_run
    for rival in RIVALS:
        cells = [m for m in results if m.system == rival]
        assert sum(m.cpu_ms_per_msg * m.messages for m in cells) > 0, rival
    postfix_rss = max(m.peak_rss_mib for m in results if m.system == "postfix")
    # master, smtpd, cleanup, qmgr, trivial-rewrite, smtp: well above one process's ~10 MiB.
    assert postfix_rss > 30


def test_rivals_relay_whole_messages_through_themselves(
    compare_run: tuple[list[Measurement], dict[str, list[bytes]], dict[str, int]],
) -> None:
    _, delivered, lookups = compare_run
    for kib in COMPARE_PLAN.sizes_kib:
        for rival in RIVALS:
            sizes = [len(message.partition(b"\n\n")[2]) for message in delivered[rival]]
            assert any(kib * 1024 * 0.97 <= size <= kib * 1024 + 64 for size in sizes), (
                rival,
                kib,
            )
    assert all(b"by mx.pf.test (Postfix)" in message for message in delivered["postfix"])
    assert all(b"(Haraka/3.3.4)" in message for message in delivered["haraka"])
    # Haraka's connection-time rDNS of 127.0.0.1 found a name: from /etc/hosts (c-ares reads
    # it first) or else from the bench's loopback DNS server, the only one node may ask.
    named = re.compile(rb"Received: from \S+ \(([A-Za-z0-9.-]+) \[127\.0\.0\.1\]\)")
    assert all(named.search(message) for message in delivered["haraka"])
    assert set(lookups) == {"haraka"}


def test_comparison_table_and_verdicts(
    compare_run: tuple[list[Measurement], dict[str, list[bytes]], dict[str, int]],
) -> None:
    results, _, _ = compare_run
    table = format_comparison(results).splitlines()
    assert len(table) == 2 + len(results)
    assert "p95 ms" in table[0] and "FAIL" not in "\n".join(table)
    verdicts = format_compare_targets(results).splitlines()
    assert len(verdicts) == len(COMPARE_TARGETS) * len(COMPARE_PLAN.sizes_kib)
    assert all(line.endswith(("met)", "NOT MET)")) for line in verdicts)


def test_verdict_follows_the_rate_ratio() -> None:
    def cell(system: str, rate: float) -> Measurement:
        return Measurement(system, 10, 20, 100, rate, 1.0, 2.0, 0.5, 50.0, 100, 100, p95_ms=1.5)

    verdicts = format_compare_targets(
        [cell("mailgate", 500), cell("postfix", 500), cell("haraka", 201)]
    ).splitlines()
    assert verdicts[0].startswith("mailgate 10 KiB x20: 1.00x postfix's")
    assert verdicts[0].endswith("(target >= 1.0x: met)")
    assert verdicts[1].startswith("mailgate 10 KiB x20: 2.49x haraka's")
    assert verdicts[1].endswith("(target >= 2.5x: NOT MET)")


def test_missing_node_or_npm_fails_the_install_instead_of_skipping(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="node is not installed"):
        install_haraka(tmp_path / "haraka")
    assert not (tmp_path / "haraka").exists()


def test_an_interrupted_install_is_not_taken_for_a_good_one(tmp_path: Path) -> None:
    prefix = tmp_path / "haraka"
    (prefix / "node_modules/Haraka").mkdir(parents=True)
    (prefix / "node_modules/Haraka/package.json").write_text('{"version": "3.3.4"}')
    assert installed_version(prefix) is None  # no .bin/haraka: npm never finished
    (prefix / "node_modules/.bin").mkdir()
    (prefix / "node_modules/.bin/haraka").write_text("")
    assert installed_version(prefix) == HARAKA_VERSION


def test_workers_ceiling_counts_the_load_generator_beside_the_workers() -> None:
    """Two workers at 0.6 ms/msg and a load generator at 0.27 ms/msg share two cores: at most
    2 / 0.87 ms = 2,299 msg/s, so against one worker's 1,545 the ratio cannot pass 1.49."""
    one = Measurement("mailgate", 1, 20, 100, 1545.0, 1.0, 2.0, 1.0, 50.0, 100, 100)
    one.cpu_ms_per_msg = 0.64
    two = Measurement("mailgate-w2", 1, 20, 100, 2200.0, 1.0, 2.0, 1.3, 50.0, 100, 100)
    two.cpu_ms_per_msg, two.load_cpu_ms_per_msg = 0.60, 0.27
    assert workers_ceiling(two, one, cores=2) == pytest.approx(2000 / 0.87 / 1545)
    (line,) = format_workers_target([one, two], cores=2).splitlines()
    assert line.startswith("mailgate-w2 1 KiB x20: 1.42x mailgate's msg/s (target >= 1.6x: NOT")
    assert line.endswith(
        "ceiling on 2 cores with the load generator's 0.27 ms/msg beside mailgate-w2's 0.60: 1.49x"
    )
