"""The queue's accept path, measured: storing one message (body, envelope, N recipients).

``python -m tests.bench.queue_store [--postgres]`` prints, for SQLite (WAL, synchronous=FULL,
in a temporary directory) and, with ``--postgres``, a throwaway PostgreSQL with fsync on:

- the hot path alone: one session storing messages one after the other through
  `QueueEgress` (SQLAlchemy Core, async) against the same rows written with the standard
  library's sqlite3 (no SQLAlchemy, no thread hop): the cost of the layers;
- group commit: 20 concurrent sessions, with commits (syncs) per message and CPU per message.

No SMTP and no delivery here: `tests/queue` tests those; this isolates the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

from mailgate.message import Message, parse_header_block
from mailgate.queue.egress import QueueEgress
from mailgate.queue.records import NewMessage
from mailgate.session import Address, Session, Transaction
from mailgate.store import GroupCommit, Store, StoreSettings


@dataclass(frozen=True, slots=True)
class Figures:
    """One run: how many messages, how fast, and what each cost."""

    label: str
    messages: int
    per_second: float
    latency_ms: float
    """Median time from the end of data to the 250 (the store's part of it)."""
    cpu_ms: float
    """CPU per message, every thread of the process (aiosqlite's included)."""
    syncs_per_message: float

    def row(self) -> str:
        return (
            f"| {self.label} | {self.messages} | {self.per_second:.0f} | {self.latency_ms:.2f} "
            f"| {self.cpu_ms:.2f} | {self.syncs_per_message:.3f} |"
        )


HEADER = (
    "| run | messages | msg/s | median ms to 250 | CPU ms/msg | commits/msg |\n"
    "|---|---|---|---|---|---|"
)


def _transaction(n: int, recipients: int, body: bytes) -> Transaction:
    tx = Transaction(Address("sender@example.net", ["BODY=8BITMIME"]))
    tx.recipients = [Address(f"r{i}@example.org", ["NOTIFY=FAILURE"]) for i in range(recipients)]
    head = f"From: sender@example.net\r\nSubject: bench\r\nMessage-ID: <{n}@bench.test>\r\n"
    tx.message = Message(parse_header_block(head.encode()), BytesIO(body))
    return tx


async def measure_accept(
    url: str, *, sessions: int, messages: int, size: int = 10240, recipients: int = 3
) -> Figures:
    """`messages` stored by `sessions` concurrent sessions through `QueueEgress`."""
    store = Store(StoreSettings(url=url))
    await store.open()
    writer = GroupCommit(store)
    writer.start()
    egress = QueueEgress(writer, "bench", name="queue", queued=lambda: None)
    body = (b"x" * 78 + b"\r\n") * (size // 80)
    session = Session("192.0.2.1")
    latencies: list[float] = []
    per_session = messages // sessions

    async def one_session(s: int) -> None:
        for i in range(per_session):
            tx = _transaction(s * per_session + i, recipients, body)
            _, dtx = await egress.begin(session, tx)
            started = time.perf_counter()
            reply = await dtx.deliver(session, tx)
            latencies.append(time.perf_counter() - started)
            assert reply.code == 250, reply

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one_session(s) for s in range(sessions)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    commits, done = writer.commits, writer.writes
    await writer.stop()
    await store.close()
    dialect = url.partition(":")[0]
    return Figures(
        f"{dialect}, SQLAlchemy, {sessions} session(s)",
        done,
        done / wall,
        statistics.median(latencies) * 1000,
        cpu / done * 1000,
        commits / done,
    )


def measure_raw_sqlite(
    path: Path, *, messages: int, size: int = 10240, recipients: int = 3
) -> Figures:
    """The same rows, one transaction per message, with the standard library only."""
    store = Store(StoreSettings(url=f"sqlite:///{path}"))
    asyncio.run(_create(store))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    body = (b"x" * 78 + b"\r\n") * (size // 80)
    latencies = []
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(messages):
        tx = _transaction(n, recipients, body)
        assert tx.message is not None
        content = tx.message.header_bytes() + body
        new = NewMessage.build(tx, content, len(tx.message.header_bytes()), "bench")
        started = time.perf_counter()
        db.execute("BEGIN")
        columns = ", ".join(f'"{c}"' for c in new.message)
        marks = ", ".join("?" for _ in new.message)
        db.execute(f"INSERT INTO messages ({columns}) VALUES ({marks})", list(new.message.values()))
        rcols = ", ".join(f'"{c}"' for c in new.recipients[0])
        rmarks = ", ".join("?" for _ in new.recipients[0])
        db.executemany(
            f"INSERT INTO recipients ({rcols}) VALUES ({rmarks})",
            [list(r.values()) for r in new.recipients],
        )
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - started)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    db.close()
    return Figures(
        "sqlite, stdlib sqlite3, 1 session",
        messages,
        messages / wall,
        statistics.median(latencies) * 1000,
        cpu / messages * 1000,
        1.0,
    )


async def _create(store: Store) -> None:
    await store.open()
    await store.close()


def run(urls: list[str], tmp: Path, *, messages: int) -> list[Figures]:
    """Every measurement, in order."""
    figures = [measure_raw_sqlite(tmp / "raw.db", messages=messages)]
    for url in urls:
        figures.append(asyncio.run(measure_accept(url, sessions=1, messages=messages)))
        figures.append(asyncio.run(measure_accept(url, sessions=20, messages=messages * 2)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.queue_store", description=__doc__)
    parser.add_argument("--postgres", action="store_true", help="also a local PostgreSQL")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        urls = [f"sqlite:///{base}/queue.db"]
        postgres = None
        if args.postgres:
            from tests.peers.postgres import Postgres
            from tests.peers.workdir import PeerDirs, create_base

            postgres = Postgres(PeerDirs(create_base()).new("postgres"), durable=True).start()
            urls.append(postgres.create_database("bench"))
        try:
            figures = run(urls, base, messages=args.messages)
        finally:
            if postgres is not None:
                postgres.stop()
    if args.json:
        print(json.dumps([asdict(f) for f in figures]))
    print(HEADER)
    for f in figures:
        print(f.row())


if __name__ == "__main__":
    main()
