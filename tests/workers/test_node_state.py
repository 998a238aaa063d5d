"""What the master keeps for the node: summed metrics, and the shared ``limits`` counters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mailgate.metrics import Metrics
from mailgate.plugins.limits.node_counters import NodeCounters
from mailgate.session import Session
from mailgate.workers.counters import CounterServer
from mailgate.workers.metrics import merge


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_merge_adds_counters_histograms_and_gauges_but_not_build_info() -> None:
    workers = [Metrics(), Metrics()]
    for n, metrics in enumerate(workers, start=1):
        for _ in range(n * 3):
            metrics.session_opened(Session(client_ip="192.0.2.1", client_port=1, listener="in"))
        metrics.message_size.observe(2000 * n)
    texts = [m.exposition().decode() for m in workers]
    merged = samples(merge(texts))
    one, two = samples(texts[0]), samples(texts[1])
    sessions = [k for k in merged if k[0] == "mailgate_sessions_total"]
    assert sessions
    for key in sessions:
        assert merged[key] == one[key] + two[key] == 9
    active = [k for k in merged if k[0] == "mailgate_sessions_active"]
    assert [merged[k] for k in active] == [9]
    assert merged[("mailgate_message_size_bytes_count", ())] == 2
    assert merged[("mailgate_message_size_bytes_sum", ())] == 6000
    assert merged[("mailgate_message_size_bytes_bucket", (("le", "4096.0"),))] == 2
    assert merged[("mailgate_message_size_bytes_bucket", (("le", "1024.0"),))] == 0
    [build] = [v for k, v in merged.items() if k[0] == "mailgate_build_info"]
    assert build == 1
    created = ("mailgate_message_size_bytes_created", ())
    assert merged[created] == min(one[created], two[created])


def test_merge_of_nothing_is_an_empty_exposition() -> None:
    assert merge([]) == "\n"


async def test_two_workers_counting_on_the_node_counters_share_one_limit(tmp_path: Path) -> None:
    server = CounterServer(str(tmp_path / "counters.sock"))
    await server.start()
    first, second = (NodeCounters(server.path, 1000, True) for _ in range(2))
    try:
        hits = []
        for counters in (first, second) * 4:
            hits.append(await counters.add("rule", "192.0.2.1", 1, 5, 60.0))
        assert [h.allowed for h in hits] == [True] * 5 + [False] * 3
        assert hits[4].count == 5
        assert (await first.add("rule", "192.0.2.2", 1, 5, 60.0)).allowed  # another key
    finally:
        await first.close()
        await second.close()
        await server.stop()
    assert not Path(server.path).exists()


async def test_a_dead_workers_concurrent_slots_are_given_back(tmp_path: Path) -> None:
    server = CounterServer(str(tmp_path / "counters.sock"))
    await server.start()
    first, second = (NodeCounters(server.path, 1000, True) for _ in range(2))
    try:
        assert (await first.acquire("open", "ip", "w1-a", 2)).allowed
        assert (await first.acquire("open", "ip", "w1-b", 2)).allowed
        assert not (await second.acquire("open", "ip", "w2-a", 2)).allowed
        await first.close()  # the worker's connection ends, as when it dies
        for _ in range(50):
            if (await second.acquire("open", "ip", "w2-a", 2)).allowed:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the closed connection's slots were not given back")
        await second.release("open", "ip", "w2-a")
    finally:
        await second.close()
        await server.stop()


async def test_a_bad_request_gets_an_error_and_the_connection_goes_on(tmp_path: Path) -> None:
    server = CounterServer(str(tmp_path / "counters.sock"))
    await server.start()
    reader, writer = await asyncio.open_unix_connection(server.path)
    try:
        writer.write(b'{"id": 7, "op": "explode", "shape": [10, true], "name": "r", "key": "k"}\n')
        writer.write(b"not json\n")
        good = {"id": 8, "op": "add", "shape": [10, True], "name": "r", "key": "k"}
        good |= {"amount": 1, "limit": 1, "window": 60}
        writer.write(json.dumps(good).encode() + b"\n")
        answers = [json.loads(await reader.readline()) for _ in range(3)]
        assert answers[0]["id"] == 7 and "explode" in answers[0]["error"]
        assert "error" in answers[1]
        assert answers[2] == {"id": 8, "allowed": True, "count": 1}
    finally:
        writer.close()
        await server.stop()
