"""The limits plugin with its counters in a real redis-server: atomic across nodes, expiring by
itself, and Redis going away handled by the plugin's ``on_error``."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailgate.plugins.limits import MemoryCounters, RedisCounters
from mailgate.testing.server import Server
from tests.peers.redis import Redis
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.limits.client import greeting, send
from tests.plugins.limits.conftest import Gateway

RULES = (
    '[[limit]]\nwhat = "messages"\nkey = "sender.address"\nwindow = 60\nmax = 3\n'
    '[[limit]]\nwhat = "concurrent"\nkey = "client.ip"\nmax = 2\n'
)


# -- the counters on their own ---------------------------------------------------------------


async def test_rate_counts_are_atomic_and_expire(redis_server: Redis) -> None:
    counters = RedisCounters(redis_server.url, sliding=False)
    hits = await asyncio.gather(*(counters.add("m", "alice", 1, 5, 60) for _ in range(20)))
    assert sum(h.allowed for h in hits) == 5  # 20 at once: exactly 5 get through
    assert not (await counters.add("m", "alice", 0, 5, 60)).allowed
    assert (await counters.add("m", "bob", 0, 5, 60)).allowed
    ttl = int(redis_server.cli("pttl", "mailgate:limits:rate:m:alice"))
    assert 60_000 < ttl <= 120_000  # two windows


async def test_a_sliding_window_lifts_after_two_windows(redis_server: Redis) -> None:
    counters = RedisCounters(redis_server.url, sliding=True)
    assert (await counters.add("m", "k", 2, 2, 1.0)).allowed
    assert not (await counters.add("m", "k", 1, 2, 1.0)).allowed
    await asyncio.sleep(2.05)
    assert (await counters.add("m", "k", 2, 2, 1.0)).allowed


async def test_concurrent_slots_of_a_crashed_node_lapse(redis_server: Redis) -> None:
    counters = RedisCounters(redis_server.url, session_lifetime=1.0)
    assert (await counters.acquire("c", "ip", "node-a:s1", 1)).allowed
    assert not (await counters.acquire("c", "ip", "node-b:s1", 1)).allowed
    await asyncio.sleep(1.1)  # node-a never released its slot
    assert (await counters.acquire("c", "ip", "node-b:s1", 1)).allowed
    await counters.release("c", "ip", "node-b:s1")
    assert redis_server.keys("mailgate:limits:slots:*") == []  # the empty set is gone


# -- two nodes -------------------------------------------------------------------------------

TwoNodes = Callable[[str], tuple[Server, Server]]


@pytest.fixture
def two_nodes(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[TwoNodes]:
    """``two_nodes(limits_toml)``: two ``mailgate serve`` processes on one conf.d."""
    started: list[Server] = []

    def start(limits_toml: str) -> tuple[Server, Server]:
        conf = tmp_path / f"conf{len(started)}"
        conf.mkdir()
        (conf / "15-limits.toml").write_text(limits_toml)
        relay = f"{smtp_sink.host}:{smtp_sink.port}"
        for _ in range(2):
            server = Server(conf, relay, log_path=tmp_path / f"node{len(started)}.log")
            started.append(server.start())
        return started[-2], started[-1]

    yield start
    for server in started:
        server.stop()


def _open(port: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=10)


async def test_two_nodes_on_one_redis_hold_the_limits_in_total(
    two_nodes: TwoNodes, redis_server: Redis, smtp_sink: SmtpSink
) -> None:
    a, b = await asyncio.to_thread(two_nodes, f'redis = "{redis_server.url}"\n{RULES}')
    for _ in range(100):  # the start-up probes' slots are given back
        if not redis_server.keys("mailgate:limits:slots:*"):
            break
        await asyncio.sleep(0.05)
    codes = [
        (await asyncio.to_thread(send, port, "alice@example.net"))[0]
        for port in (a.port, b.port, a.port, b.port, a.port)
    ]
    assert codes == [250, 250, 250, 450, 450]
    assert len(smtp_sink.wait_for_messages(3)) == 3
    held = [await asyncio.to_thread(_open, port) for port in (a.port, b.port)]
    try:
        assert (await asyncio.to_thread(greeting, a.port))[0] == 421
        assert (await asyncio.to_thread(greeting, b.port))[0] == 421
    finally:
        for client in held:
            await asyncio.to_thread(client.quit)
    assert redis_server.keys("mailgate:limits:rate:*") == [
        "mailgate:limits:rate:messages:sender.address:60:alice@example.net"
    ]


async def test_without_redis_each_node_counts_alone(two_nodes: TwoNodes) -> None:
    a, b = await asyncio.to_thread(two_nodes, RULES)
    codes = [
        (await asyncio.to_thread(send, port, "alice@example.net"))[0]
        for port in (a.port, b.port, a.port, b.port, a.port, b.port)
    ]
    assert codes == [250] * 6  # 3 each: the limit of 3 holds per node, not in total


# -- Redis down -------------------------------------------------------------------------------


async def test_redis_down_tempfails_by_default_and_counting_resumes(
    gateway: Gateway, redis_server: Redis
) -> None:
    app = await gateway(
        f'redis = "{redis_server.url}"\nredis_timeout = 0.5\n'
        '[[limit]]\nwhat = "messages"\nkey = "sender.address"\nmax = 2\n'
        '[[limit]]\nwhat = "connections"\nkey = "client.ip"\nmax = 100\n'
    )
    port = app.ports[0]
    assert (await asyncio.to_thread(send, port))[0] == 250
    redis_server.stop()
    code, _ = await asyncio.to_thread(greeting, port)
    assert code == 421  # on_error = "tempfail" at connect
    redis_server.start()  # the same port, empty
    assert (await asyncio.to_thread(send, port))[0] == 250
    assert (await asyncio.to_thread(send, port))[0] == 250
    assert (await asyncio.to_thread(send, port))[0] == 450


async def test_redis_down_at_mail_is_451(gateway: Gateway, redis_server: Redis) -> None:
    app = await gateway(
        f'redis = "{redis_server.url}"\n'
        '[[limit]]\nwhat = "messages"\nkey = "sender.address"\nmax = 2\n'
    )
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 250
    redis_server.stop()
    code, text, _ = await asyncio.to_thread(send, app.ports[0])
    assert (code, text) == (451, b"4.3.0 Temporary local problem, try again later")


async def test_redis_down_with_on_error_accept_lets_mail_through(
    gateway: Gateway, redis_server: Redis, smtp_sink: SmtpSink
) -> None:
    app = await gateway(
        f'redis = "{redis_server.url}"\non_error = "accept"\n'
        '[[limit]]\nwhat = "messages"\nkey = "sender.address"\nmax = 1\n'
    )
    redis_server.stop()
    for _ in range(3):
        assert (await asyncio.to_thread(send, app.ports[0]))[0] == 250
    assert len(smtp_sink.wait_for_messages(3)) == 3


async def test_redis_and_memory_give_the_same_answers(redis_server: Redis) -> None:
    """The Lua script and the in-memory table agree, attempt by attempt (a window of a year,
    so that no boundary falls inside the test)."""
    year = 365 * 86400.0
    memory = MemoryCounters(100, sliding=False)
    shared = RedisCounters(redis_server.url, sliding=False)
    sequence = [(key, amount, 6) for key in "abc" for amount in (0, 1, 3, 2, 5, 1, 0, 4)]
    sequence += [("d", 1, 0), ("d", 0, 0), ("e", 2, 2), ("e", 0, 2), ("e", 1, 3)]
    for key, amount, limit in sequence:
        mine = await memory.add("r", key, amount, limit, year)
        theirs = await shared.add("r", key, amount, limit, year)
        assert mine == theirs, (key, amount, limit)
    for token in ("s1", "s2", "s3"):
        assert await memory.acquire("c", "k", token, 2) == await shared.acquire("c", "k", token, 2)
    await memory.release("c", "k", "s1")
    await shared.release("c", "k", "s1")
    assert await memory.acquire("c", "k", "s3", 2) == await shared.acquire("c", "k", "s3", 2)
