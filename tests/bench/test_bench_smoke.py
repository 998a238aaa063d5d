"""The benchmark in smoke mode: every system relays every message, and the table is sound.

Not a timed test: it proves that the harness and every system under test work end to end
(smtp-source -> system -> smtp-sink), so that `python -m tests.bench` can be trusted.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.peers.workdir import PeerDirs

from . import bench_auth, bench_bridge, bench_milter
from . import bench_milter_latency as latency
from .harness import (
    DEFAULT_SYSTEMS,
    BenchPlan,
    Measurement,
    System,
    format_table,
    format_targets,
    run_benchmark,
)
from .profile import hotspots

pytestmark = pytest.mark.bench

SMOKE_SYSTEMS = DEFAULT_SYSTEMS


@pytest.fixture(scope="module")
def smoke_run() -> tuple[list[Measurement], dict[str, list[bytes]]]:
    """One smoke run of every system, with the messages each one delivered to its sink."""
    delivered: dict[str, list[bytes]] = {}

    def collect(systems: list[System]) -> None:
        for system in systems:
            assert system.sink is not None
            delivered[system.name] = system.sink.messages()

    results = run_benchmark(BenchPlan.smoke(), SMOKE_SYSTEMS, dump=True, inspect=collect)
    return results, delivered


@pytest.mark.peer  # smoke_run starts smtp-sink, smtp-source and mailgate
def test_every_system_delivers_every_message(
    smoke_run: tuple[list[Measurement], dict[str, list[bytes]]],
) -> None:
    results, _ = smoke_run
    plan = BenchPlan.smoke()
    assert {m.system for m in results} == set(SMOKE_SYSTEMS)
    assert len(results) == len(SMOKE_SYSTEMS) * len(plan.sizes_kib) * len(plan.sessions)
    for m in results:
        assert m.errors == [], (m.system, m.size_kib, m.sessions)
        assert m.sent == (plan.fixed_messages or 0) + plan.probe_messages
        assert m.delivered == m.sent, (m.system, m.size_kib, m.sessions)


@pytest.mark.peer  # smoke_run starts smtp-sink, smtp-source and mailgate
def test_every_cell_has_rate_latency_cpu_and_memory(
    smoke_run: tuple[list[Measurement], dict[str, list[bytes]]],
) -> None:
    results, _ = smoke_run
    for m in results:
        assert m.rate > 0
        assert 0 < m.p50_ms <= m.p99_ms
        assert 0 <= m.cpu <= (os.cpu_count() or 1), "CPU time per second of wall time"
        assert m.peak_rss_mib > 1


@pytest.mark.peer  # smoke_run starts smtp-sink, smtp-source and mailgate
def test_relayed_messages_reach_the_sink_whole(
    smoke_run: tuple[list[Measurement], dict[str, list[bytes]]],
) -> None:
    _, delivered = smoke_run
    relayed = delivered["minimal-relay"]
    assert relayed, "the minimal relay delivered nothing"
    sizes = {len(message) for message in relayed}
    # Each body size arrives in full: smtp-sink dumps with LF line ends, so a 100 KiB body of
    # 80-byte lines shrinks by about 1/82, and the headers add a few hundred bytes.
    for kib in BenchPlan.smoke().sizes_kib:
        assert any(kib * 1024 * 0.98 <= size < kib * 1024 + 2048 for size in sizes), kib
    assert all(b"X-Rcpt-Args: <b@y.test>" in message for message in relayed)


def body_length(dumped: bytes) -> int:
    """Length of a dumped message's body (smtp-sink dumps with LF line ends)."""
    return len(dumped.partition(b"\n\n")[2])


@pytest.mark.peer  # smoke_run starts smtp-sink, smtp-source and mailgate
def test_mailgate_relays_whole_messages_and_the_plugin_adds_its_header(
    smoke_run: tuple[list[Measurement], dict[str, list[bytes]]],
) -> None:
    _, delivered = smoke_run
    plain, with_header = delivered["mailgate"], delivered["mailgate+header"]
    assert len(plain) == len(delivered["minimal-relay"])
    # mailgate may add trace headers; the bodies must arrive exactly as the minimal relay's do.
    assert sorted(map(body_length, plain)) == sorted(map(body_length, delivered["minimal-relay"]))
    assert not any(b"X-Bench:" in message for message in plain)
    assert all(b"\nX-Bench: mailgate\n" in message for message in with_header)


@pytest.mark.peer  # smoke_run starts smtp-sink, smtp-source and mailgate
def test_table_lists_every_cell(
    smoke_run: tuple[list[Measurement], dict[str, list[bytes]]],
) -> None:
    results, _ = smoke_run
    table = format_table(results).splitlines()
    assert len(table) == 2 + len(results)
    assert "FAIL" not in "\n".join(table)
    targets = format_targets(results).splitlines()
    assert len(targets) == 4  # 10 and 100 KiB, 1 and 20 sessions
    assert all("of the minimal relay's msg/s" in line for line in targets)


def test_profile_hotspots_count_self_and_total_time() -> None:
    stacks = [
        'process 7:"python x";main (app/cli.py:3);handle (smtp/data.py:10) 6',
        "main (app/cli.py:3);handle (smtp/data.py:10);scan (smtp/data.py:40) 3",
        "main (app/cli.py:3) 1",
    ]
    own, total, samples = hotspots(stacks)
    assert samples == 10
    assert own == {"smtp/data.py:handle": 6, "smtp/data.py:scan": 3, "app/cli.py:main": 1}
    assert total["app/cli.py:main"] == 10
    assert total["smtp/data.py:handle"] == 9


names = st.text(alphabet="abcdefgh_", min_size=1, max_size=8)
frames = st.builds(
    lambda function, path, line: f"{function} ({path}.py:{line})", names, names, st.integers(1, 999)
)


@given(st.lists(st.tuples(st.lists(frames, min_size=1, max_size=5), st.integers(1, 50))))
def test_profile_self_time_adds_up_to_the_samples(stacks: list[tuple[list[str], int]]) -> None:
    own, total, samples = hotspots(f"{';'.join(stack)} {count}" for stack, count in stacks)
    assert samples == sum(count for _, count in stacks)
    assert sum(own.values()) == samples
    assert all(total[name] >= own[name] for name in own)
    assert all(count <= samples for count in total.values())


def test_milter_latency_bench_sends_every_message_through_its_milter(peer_dirs: PeerDirs) -> None:
    """Every route of bench_milter_latency delivers every message, each milter's mark is on
    exactly the messages of its three routes (so each route really ran its milter), and every
    figure in the table is a positive time."""
    delivered: list[bytes] = []
    rows = latency.run(messages=3, repeats=1, dirs=peer_dirs, inspect=delivered.extend)
    per_route = latency.WARMUP + 3
    routes = 2 + len(latency.PATHS) * len(latency.MILTERS)  # Postfix alone, mailgate alone
    assert len(delivered) == routes * per_route
    assert latency.marked(delivered) == dict.fromkeys(
        latency.MILTERS, len(latency.PATHS) * per_route
    )
    assert [row.milter for row in rows] == [latency.ALONE, *latency.MILTERS]
    assert all(row.ms[path] > 0 for row in rows for path in latency.PATHS)
    assert len(latency.table(rows).splitlines()) == 2 + len(rows)


def test_bridge_bench_runs_every_route(peer_dirs: PeerDirs) -> None:
    """Postfix and mailgate, alone and with opendkim over TCP and unix: every route delivers
    (a failed smtp-source or a milter failure in mailgate's log raises) and has a rate."""
    results = bench_bridge.run(messages=40, repeats=1, dirs=peer_dirs)
    assert results[0].name == "Postfix alone"
    assert len(results) == 6
    assert all(r.rate > 0 and r.latency_ms > 0 for r in results)
    bridged = [r for r in results if r.name.startswith("mailgate → opendkim")]
    assert len(bridged) == 2 and all(
        r.mailgate_cpu_ms > 0 and r.opendkim_cpu_ms > 0 for r in bridged
    )


def test_milter_listener_bench_runs_every_route(peer_dirs: PeerDirs) -> None:
    """Postfix alone, mailgate as its milter (TCP, unix, with and without a plugin) and the
    pymilter milter (TCP, unix): every route delivers and has a rate and a one-session
    latency."""
    results = bench_milter.run(messages=40, repeats=1, dirs=peer_dirs)
    assert len(results) == 10
    assert all(r.rate > 0 and r.latency_ms > 0 for r in results)


def test_auth_bench_runs_every_route(peer_dirs: PeerDirs) -> None:
    """bench_auth: every route delivers every message, and the mail of each route carries what
    its checks said (mailgate's one Authentication-Results, or opendkim's and opendmarc's), so
    every route really did its checks; every figure of the table is there."""
    results = bench_auth.run(messages=20, repeats=1, dirs=peer_dirs, probe=10)
    assert [r.name for r in results] == [
        bench_auth.PROXY_PLAIN,
        bench_auth.PROXY_AUTH,
        bench_auth.POSTFIX_ALONE,
        bench_auth.POSTFIX_FLOOR,
        bench_auth.POSTFIX_LISTENER,
        bench_auth.POSTFIX_MAILGATE,
        bench_auth.POSTFIX_MAILGATE_W2,
        bench_auth.POSTFIX_OPEN,
    ]
    for r in results:
        assert (r.sent, r.delivered, r.errors) == (30, 30, []), r
        assert r.rate > 0 and 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
        assert r.cpu_total_ms >= 0
    said = {r.name: r.results for r in results}
    mailgate = "spf=pass dkim=pass arc=none dmarc=pass"
    assert said[bench_auth.PROXY_AUTH] == said[bench_auth.POSTFIX_MAILGATE] == mailgate
    assert said[bench_auth.POSTFIX_MAILGATE_W2] == mailgate
    assert set(said[bench_auth.POSTFIX_OPEN].split()) == {"dkim=pass", "spf=pass", "dmarc=pass"}
    for name in (bench_auth.PROXY_PLAIN, bench_auth.POSTFIX_ALONE, bench_auth.POSTFIX_LISTENER):
        assert said[name] == "(no Authentication-Results)"
    # The floor milter's header names no check: it checks nothing.
    assert said[bench_auth.POSTFIX_FLOOR] == "(no Authentication-Results)"
    assert len(bench_auth.table(results).splitlines()) == 2 + len(results)
    assert len(bench_auth.targets(results).splitlines()) == 4
