"""Connections at scale (issue 14, item 6): 5,000 idle sessions on one listener are all served,
a new client is still greeted quickly, and what each idle session costs in memory is measured.

The listener runs in its own process (``python -m tests.smtp.test_idle_scale``), so its RSS is
the node's alone; the clients are this process's, from many loopback addresses (127.0.x.y), so
`max_sessions_per_client` is not what is tested here (`tests/smtp/test_pinning.py` and the last
test below are about that).
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from mailgate.pipeline import Pipeline
from mailgate.smtp.listener import SmtpListener
from mailgate.smtp.settings import SmtpListenerSettings
from tests import event_loops
from tests.smtp.conftest import GatewayFactory
from tests.smtp.helpers import RecordingEgress

IDLE_SESSIONS = 5000
MAX_SESSIONS = 6000
GREETING_BUDGET = 0.100
"""Seconds a new client may wait for its greeting while the idle sessions are open."""
BYTES_PER_SESSION_BUDGET = 20 * 1024
KIB = 1024


def raise_open_file_limit(wanted: int) -> None:
    """At least `wanted` descriptors for this process (and the children it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may
            return
        except (ValueError, PermissionError):
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted} and cannot be raised")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def source_address(i: int) -> str:
    """The i-th client's loopback address: 250 clients per 127.0.x.0/24."""
    return f"127.0.{i // 250}.{i % 250 + 1}"


def vm_rss(pid: int) -> int:
    """The resident set of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise RuntimeError(f"no VmRSS for {pid}")


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole SMTP reply (its continuation lines too)."""
    reply = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError(f"closed after {reply!r}")
        reply += line
        if line[3:4] != b"-":
            return reply


Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def idle_client(port: int, source: str) -> tuple[Client, bytes, bytes]:
    """A client that reads the greeting, says EHLO, reads the reply and then holds on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    greeting = await read_reply(reader)
    if not greeting.startswith(b"220 "):
        return (reader, writer), greeting, b""
    writer.write(b"EHLO idle.test\r\n")
    ehlo = await read_reply(reader)
    return (reader, writer), greeting, ehlo


async def open_idle_clients(port: int, first: int, count: int) -> tuple[list[Client], list[bytes]]:
    """`count` idle clients (from addresses `first`...), at most 200 connecting at once;
    the clients and their greeting + EHLO replies."""
    gate = asyncio.Semaphore(200)

    async def one(i: int) -> tuple[Client, bytes, bytes]:
        async with gate:
            return await asyncio.wait_for(idle_client(port, source_address(i)), 30)

    results = await asyncio.gather(*(one(i) for i in range(first, first + count)))
    return [r[0] for r in results], [r[1] + r[2] for r in results]


async def close_clients(clients: list[Client]) -> None:
    for _, writer in clients:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in clients), return_exceptions=True)


async def greeting_time(port: int, source: str) -> float:
    """Seconds from connecting to a whole greeting, for a new client (which then says QUIT)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    greeting = await read_reply(reader)
    elapsed = time.perf_counter() - started
    assert greeting.startswith(b"220 "), greeting
    writer.write(b"QUIT\r\n")
    await read_reply(reader)
    writer.close()
    await writer.wait_closed()
    return elapsed


@pytest.fixture
def listener_process() -> Iterator[tuple[int, int]]:
    """The listener in its own process: its pid and port."""
    raise_open_file_limit(2 * IDLE_SESSIONS + 1000)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.smtp.test_idle_scale", str(MAX_SESSIONS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        yield process.pid, int(process.stdout.readline())
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_five_thousand_idle_sessions(listener_process: tuple[int, int]) -> None:
    pid, port = listener_process

    async def scenario() -> None:
        # Warm up: the code paths, the loop's structures and malloc's arenas a session needs,
        # so that what is measured next is what more sessions add.
        warm, _ = await open_idle_clients(port, IDLE_SESSIONS, 50)
        await close_clients(warm)
        await asyncio.sleep(0.5)
        before = vm_rss(pid)
        started = time.perf_counter()
        clients, replies = await open_idle_clients(port, 0, IDLE_SESSIONS)
        opened = time.perf_counter() - started
        try:
            assert len(clients) == IDLE_SESSIONS
            refused = [r for r in replies if not (r.startswith(b"220 ") and b"\r\n250 " in r)]
            assert not refused, f"{len(refused)} not served, e.g. {refused[0]!r}"
            await asyncio.sleep(0.5)  # every session is idle, waiting for its next command
            after = vm_rss(pid)
            times = [await greeting_time(port, source_address(5900 + i)) for i in range(15)]
            # The idle sessions are still there: each answers a NOOP.
            for reader, writer in clients[::500]:
                writer.write(b"NOOP\r\n")
                assert (await read_reply(reader)).startswith(b"250 ")
        finally:
            await close_clients(clients)
        per_session = (after - before) / IDLE_SESSIONS
        median, worst = statistics.median(times), max(times)
        print(
            f"\n{IDLE_SESSIONS} idle sessions opened in {opened:.1f} s;"
            f" RSS {before / KIB / KIB:.1f} MiB -> {after / KIB / KIB:.1f} MiB,"
            f" {per_session / KIB:.1f} KiB per idle session;"
            f" new client's greeting: median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms"
        )
        assert per_session < BYTES_PER_SESSION_BUDGET
        assert median < GREETING_BUDGET
        assert sorted(times)[-3] < GREETING_BUDGET  # a load spike on a shared machine may miss

    with asyncio.Runner(loop_factory=event_loops.new_loop) as runner:
        runner.run(scenario())


def test_one_client_cannot_take_every_session(gateway_factory: GatewayFactory) -> None:
    """With the default `max_sessions_per_client` (20), 100 connections from 127.0.0.9 get 20
    sessions and 80 ``421 4.7.0``, and another address is still served."""
    gateway = gateway_factory(RecordingEgress())
    limit = gateway.settings.max_sessions_per_client
    assert limit == SmtpListenerSettings(address="127.0.0.1:0").max_sessions_per_client == 20

    async def scenario() -> None:
        async def greeting(source: str) -> tuple[Client, bytes]:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gateway.port, local_addr=(source, 0)
            )
            return (reader, writer), await read_reply(reader)

        results = [await greeting("127.0.0.9") for _ in range(100)]
        clients = [c for c, _ in results]
        try:
            greetings = [g for _, g in results]
            assert sum(g.startswith(b"220 ") for g in greetings) == limit
            refused = [g for g in greetings if not g.startswith(b"220 ")]
            assert len(refused) == 100 - limit
            assert all(
                g.startswith(b"421 4.7.0 Too many connections from your address") for g in refused
            )
            other, reply = await greeting("127.0.0.10")
            clients.append(other)
            assert reply.startswith(b"220 ")
        finally:
            await close_clients(clients)

    with asyncio.Runner(loop_factory=event_loops.new_loop) as runner:
        runner.run(scenario())


async def serve(max_sessions: int) -> None:
    """The listener process: print the port, serve until stdin closes."""
    pipeline = Pipeline([])
    listener = SmtpListener(
        SmtpListenerSettings(
            address="127.0.0.1:0", hostname="mx.mailgate.test", max_sessions=max_sessions
        ),
        pipeline=lambda: pipeline,
        egress=RecordingEgress(),
    )
    await listener.start()
    print(listener.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.stop()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with asyncio.Runner(loop_factory=event_loops.new_loop) as runner:
        runner.run(serve(int(sys.argv[1])))
