"""The queue's drain rate: ``python -m tests.bench.queue_drain [--messages N] [--postgres]``.

For each store (SQLite; with ``--postgres`` also a throwaway PostgreSQL 15 with fsync on):

1. ``mailgate serve`` in queue mode starts with its next hop down (an smtp-sink whose port
   is chosen but which is not started) and a retry time of an hour;
2. smtp-source fills the queue with N messages over 20 sessions; each is tried once,
   refused (connection refused) and deferred;
3. the sink starts, every message is made due (what ``mailgate queue flush`` does) and the
   node is woken with SIGUSR1; the clock starts;
4. the clock stops when the sink has all N, and again when the store is empty (the last
   delivery results committed).

It prints msg/s to the sink, the time to an empty store, and the CPU per message of the
mailgate process (and of PostgreSQL's processes) during the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mailgate.logging import LoggingSettings, configure_logging
from mailgate.queue import admin
from mailgate.store import Store, StoreSettings

from .harness import (
    SmtpSink,
    System,
    cpu_seconds,
    mailgate,
    run_smtp_source,
    wait_for_count,
)

DRAIN_CONF = """\
[store]
url = "{url}"
[queue]
concurrency = {concurrency}
min_backoff = 3600.0
max_backoff = 3600.0
[[listener]]
egress = "queue"
"""


@dataclass(frozen=True, slots=True)
class Drain:
    """One drain: how fast the queue emptied, and what it cost."""

    store: str
    messages: int
    fill_rate: float
    """msg/s accepted while filling (the next hop down: each one also tried once)."""
    to_sink_seconds: float
    to_empty_seconds: float
    cpu_ms: float
    """mailgate's CPU per message during the drain."""
    store_cpu_ms: float | None
    """PostgreSQL's CPU per message during the drain (None for SQLite: in mailgate's)."""

    def row(self) -> str:
        store_cpu = f"{self.store_cpu_ms:.2f}" if self.store_cpu_ms is not None else "-"
        return (
            f"| {self.store} | {self.messages} | {self.fill_rate:,.0f} "
            f"| {self.messages / self.to_sink_seconds:,.0f} | {self.to_sink_seconds:.2f} "
            f"| {self.to_empty_seconds:.2f} | {self.cpu_ms:.2f} | {store_cpu} |"
        )


HEADER = (
    "| store | messages | fill msg/s | drain msg/s | s to sink | s to empty store "
    "| mailgate CPU ms/msg | PostgreSQL CPU ms/msg |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


async def _depth(url: str) -> admin.Depth:
    store = Store(StoreSettings(url=url))
    await store.open()
    try:
        async with store.engine.connect() as conn:
            return await admin.depth(conn, time.time())
    finally:
        await store.close()


async def _flush(url: str) -> int:
    store = Store(StoreSettings(url=url))
    await store.open()
    try:
        action = await store.transaction(
            lambda conn: admin.retry(conn, admin.Filters(), time.time())
        )
    finally:
        await store.close()
    return len(action.changed)


def _wait_deferred(url: str, messages: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        depth = asyncio.run(_depth(url))
        if depth.messages["deferred"] == messages and depth.in_flight == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the queue did not settle: {depth}")
        time.sleep(0.2)


def drain(
    label: str,
    url: str,
    workdir: Path,
    messages: int,
    size: int,
    store_pid: int | None = None,
    concurrency: int = 20,
) -> Drain:
    """Fill the queue with the next hop down, then time how fast it empties."""
    sink = SmtpSink(workdir, f"sink-{label}", dump=False)  # down until the drain
    system = System(
        f"drain-{label}",
        mailgate({}, DRAIN_CONF.replace("{url}", url).replace("{concurrency}", str(concurrency))),
    )
    system.start(workdir, downstream=sink)
    try:
        fill_seconds, error = run_smtp_source(system.port, 20, messages, size)
        if error:
            raise RuntimeError(f"{label}: fill failed: {error}\n{system.log_tail()}")
        _wait_deferred(url, messages)
        sink.start()
        cpu_before = cpu_seconds(system.pid)
        store_before = cpu_seconds(store_pid) if store_pid is not None else 0.0
        started = time.perf_counter()
        due = asyncio.run(_flush(url))
        os.kill(system.pid, signal.SIGUSR1)
        delivered = wait_for_count(sink, messages, timeout=600)
        to_sink = time.perf_counter() - started
        while asyncio.run(_depth(url)).oldest is not None:
            time.sleep(0.05)
        to_empty = time.perf_counter() - started
        cpu = cpu_seconds(system.pid) - cpu_before
        store_cpu = cpu_seconds(store_pid) - store_before if store_pid is not None else None
    finally:
        system.stop()
        sink.stop()
    if delivered != messages or due != messages:
        raise RuntimeError(f"{label}: {due} made due, {delivered} of {messages} delivered")
    return Drain(
        store=label,
        messages=messages,
        fill_rate=messages / fill_seconds,
        to_sink_seconds=to_sink,
        to_empty_seconds=to_empty,
        cpu_ms=cpu * 1000 / messages,
        store_cpu_ms=store_cpu * 1000 / messages if store_cpu is not None else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.queue_drain", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10, help="KiB of body (default 10)")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    parser.add_argument(
        "--concurrency", type=int, default=20, help="[queue] concurrency (default 20)"
    )
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"))
    with tempfile.TemporaryDirectory(prefix="mailgate-drain-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # smtp-sink drops to nobody
        results = [
            drain(
                "sqlite", f"sqlite:///{workdir}/queue.db", workdir, args.messages, args.size * 1024
            )
        ]
        if args.postgres:
            from tests.peers.postgres import Postgres

            postgres = Postgres(workdir / "postgres", durable=True).start()
            try:
                assert postgres.daemon is not None
                url = postgres.create_database("drain")
                results.append(
                    drain(
                        "postgresql",
                        url,
                        workdir,
                        args.messages,
                        args.size * 1024,
                        store_pid=postgres.daemon.proc.pid,
                        concurrency=args.concurrency,
                    )
                )
            finally:
                postgres.stop()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(HEADER)
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
