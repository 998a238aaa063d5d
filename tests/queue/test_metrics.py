"""The queue's metrics, scraped over HTTP from a running node, on SQLite and PostgreSQL: depth
by state from the store, the oldest message's age, and delivery attempts by route."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mailgate.app import App
from mailgate.queue import admin
from mailgate.store import Store, StoreSettings
from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs
from tests.queue.helpers import message, send, write_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``GET /metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def until(port: int, check, timeout: float = 20.0) -> Samples:  # type: ignore[no-untyped-def]
    """Scrape until `check(samples)` holds; the samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await asyncio.to_thread(scrape, port)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, {k: v for k, v in samples.items() if "queue" in k[0]}
        await asyncio.sleep(0.5)


async def test_queue_depth_age_and_deliveries_by_route(
    store_url: str, tmp_path: Path, peer_dirs: PeerDirs
) -> None:
    sink = SmtpSink(peer_dirs.new("sink"))  # down until started
    hop = f"127.0.0.1:{sink.port}"
    metrics_port = free_port()
    config = write_config(
        tmp_path / "conf", store_url, hop, queue={"min_backoff": 600.0, "max_backoff": 600.0}
    )
    with (config / "mailgate.toml").open("a") as toml:
        toml.write(f'[metrics]\naddress = "127.0.0.1:{metrics_port}"\n')
    app = App(config, configure_logs=False)
    await app.start()
    try:
        for i in range(2):
            rcpts = ["a@example.org", "b@example.org"] if i == 0 else ["c@example.org"]
            code, _ = await asyncio.to_thread(send, app.ports[0], rcpts, message(f"m{i}@m.test"))
            assert code == 250
        store = Store(StoreSettings(url=store_url))
        await store.open()
        try:
            async with store.engine.begin() as conn:
                ids = await admin.matching_ids(conn, admin.Filters(), time.time())
            await asyncio.sleep(1.0)  # both tried once (the next hop is down)
            async with store.engine.begin() as conn:
                await admin.hold(conn, admin.Filters(ids=(ids[1],)), "test", time.time())
        finally:
            await store.close()

        def deferred(s: Samples) -> bool:
            return value(s, "mailgate_queue_messages", state="held") == 1

        samples = await until(metrics_port, deferred)
        assert value(samples, "mailgate_queue_messages", state="deferred") == 1
        assert value(samples, "mailgate_queue_messages", state="pending") == 0
        assert value(samples, "mailgate_queue_recipients", state="deferred") == 3
        sent = sum(len(message(f"m{i}@m.test")) for i in range(2))
        stored = value(samples, "mailgate_queue_size_bytes") or 0
        assert sent < stored < sent + 2000  # with the Received: headers mailgate added
        assert 1.0 <= (value(samples, "mailgate_queue_oldest_message_age_seconds") or 0) < 60
        assert (
            value(samples, "mailgate_queue_deliveries_total", route="default", result="deferred")
            == 3
        )

        sink.start()
        store = Store(StoreSettings(url=store_url))
        await store.open()
        try:
            async with store.engine.begin() as conn:
                await admin.release(conn, admin.Filters(), time.time())
                await admin.retry(conn, admin.Filters(), time.time())
        finally:
            await store.close()
        app.wake_queue()

        def drained(s: Samples) -> bool:
            return (
                value(s, "mailgate_queue_messages", state="deferred") == 0
                and value(s, "mailgate_queue_messages", state="held") == 0
            )

        samples = await until(metrics_port, drained)
        assert (
            value(samples, "mailgate_queue_deliveries_total", route="default", result="delivered")
            == 3
        )
        assert value(samples, "mailgate_queue_oldest_message_age_seconds") == 0
        assert value(samples, "mailgate_queue_recipients", state="deferred") == 0
    finally:
        await app.stop()
        sink.stop()
