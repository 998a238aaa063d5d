"""SIGTERM to a running ``mailgate serve`` with a queue, on SQLite and PostgreSQL: it stops
accepting at once, lets the deliveries in flight finish within ``shutdown_timeout``, stops
the rest when that time is up, and leaves no lease behind either way."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter
from pathlib import Path

from tests.peers.smtp_sink import SmtpSinkFactory
from tests.queue.helpers import Node, message, send, store_rows
from tests.queue.test_crash import leases, sink_ids, wait_for


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _sigterm(node: Node) -> float:
    """SIGTERM, and the seconds until the process has exited."""
    assert node.proc is not None
    started = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    node.proc.wait(timeout=60)
    return time.monotonic() - started


async def test_sigterm_finishes_deliveries_in_flight_within_the_timeout(
    store_url: str, tmp_path: Path, smtp_sink_factory: SmtpSinkFactory
) -> None:
    sink = smtp_sink_factory(data_delay=2)  # each delivery takes 2 s at the sink
    hop = f"127.0.0.1:{sink.port}"
    node = Node.configure(tmp_path / "n", store_url, hop, node_id="n", shutdown_timeout=20.0)
    node.start()
    try:
        for i in range(3):
            code, _ = await asyncio.to_thread(
                send, node.port, ["b@example.org"], message(f"term{i}@q.test")
            )
            assert code == 250
        await asyncio.to_thread(wait_for, lambda: asyncio.run(leases(store_url))["n"] == 3)
        took = await asyncio.to_thread(_sigterm, node)
        assert _refused(node.port)  # it accepts nothing more
    finally:
        node.kill()
    # The three were mid-delivery: they were let finish, then the node left.
    assert Counter(sink_ids(sink)) == {f"term{i}@q.test": 1 for i in range(3)}
    assert took < 15, took
    assert await store_rows(store_url) == ([], [])
    assert '"event": "delivery stopped"' in node.log and '"interrupted": 0' in node.log


async def test_sigterm_stops_slow_deliveries_after_shutdown_timeout_and_releases_leases(
    store_url: str, tmp_path: Path, smtp_sink_factory: SmtpSinkFactory
) -> None:
    sink = smtp_sink_factory(data_delay=30)  # far longer than the shutdown timeout
    hop = f"127.0.0.1:{sink.port}"
    node = Node.configure(tmp_path / "n", store_url, hop, node_id="n", shutdown_timeout=1.0)
    node.start()
    try:
        for i in range(2):
            code, _ = await asyncio.to_thread(
                send, node.port, ["b@example.org"], message(f"cut{i}@q.test")
            )
            assert code == 250
        await asyncio.to_thread(wait_for, lambda: asyncio.run(leases(store_url))["n"] == 2)
        took = await asyncio.to_thread(_sigterm, node)
    finally:
        node.kill()
    assert took < 10, took  # bounded: the timeout, and the time to release and close
    assert await leases(store_url) == Counter()  # another node (or a restart) takes them now
    msgs, rcpts = await store_rows(store_url)
    assert len(msgs) == 2 and {r["state"] for r in rcpts} <= {"pending", "deferred"}
    assert '"interrupted": 2' in node.log
