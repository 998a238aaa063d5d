"""`GroupCommit`: concurrent writers share one transaction, so one commit and one fsync.

Each writer hands in a piece of work and waits for its commit. One task takes the first piece
waiting, then every other piece already waiting (up to `max_batch`, or `max_bytes` of message
content), runs them in order in one transaction and commits. While that commit is on its way
to the disk the next pieces gather, so the number of syncs per message falls as the load
rises, without a timer that would make a lone message wait.

Inserts handed in as `Rows` are merged: the rows of every such piece in a batch go in with one
multi-row INSERT per table, so a batch of 20 accepted messages costs two statements, not 40.

If the shared transaction fails, each piece is tried again in a transaction of its own, so one
bad write does not fail the others. A piece whose writer stopped waiting (cancelled) before
its transaction began is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.logging import get_logger
from mailgate.store.database import Store

log = get_logger("mailgate.store")

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]


class StoreClosed(RuntimeError):
    """The store is shutting down and takes no more writes."""


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows to insert, table by table in order (a parent table before its children)."""

    tables: tuple[tuple[Table, list[dict[str, Any]]], ...]


@dataclass(slots=True)
class _Piece:
    work: Work | Rows
    size: int
    future: asyncio.Future[Any]


class GroupCommit:
    """The store's one writer (see the module docstring). `start`, `write`, `stop`."""

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 128,
        max_bytes: int = 64 << 20,
        max_waiting: int = 1024,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self._waiting: asyncio.Queue[_Piece | None] = asyncio.Queue(max_waiting)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0
        """Transactions committed (each one sync on SQLite)."""
        self.writes = 0
        """Pieces of work committed."""

    def start(self) -> None:
        """Start the writing task."""
        if self._task is None:
            self._closed = False
            self._task = asyncio.create_task(self._run(), name="store group commit")

    async def write(self, work: Callable[[AsyncConnection], Awaitable[T]], size: int = 0) -> T:
        """Run `work` in the next shared transaction; returns its result once committed.

        Raises what the store raised (the transaction was rolled back), or `StoreClosed`.
        `size` is the bytes of content the work writes (batches are bounded by it).
        """
        if self._closed or self._task is None:
            raise StoreClosed("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._waiting.put(_Piece(work, size, future))
        return await future

    async def insert(self, rows: Rows, size: int = 0) -> None:
        """Insert `rows` in the next shared transaction (merged with the other inserts of the
        batch); returns once committed. Raises as `write` does."""
        if self._closed or self._task is None:
            raise StoreClosed("the store is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._waiting.put(_Piece(rows, size, future))
        await future

    async def stop(self) -> None:
        """Commit what is waiting, then stop."""
        task, self._task = self._task, None
        self._closed = True
        if task is None:
            return
        await self._waiting.put(None)
        await task

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._waiting.get()
            if first is None:
                break
            batch, size = [first], first.size
            while len(batch) < self.max_batch and size < self.max_bytes:
                try:
                    piece = self._waiting.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if piece is None:
                    stopping = True
                    break
                batch.append(piece)
                size += piece.size
            await self._commit([p for p in batch if not p.future.done()])

    async def _commit(self, batch: list[_Piece]) -> None:
        if not batch:
            return
        try:
            results = await self.store.transaction(lambda conn: _run_all(conn, batch))
        except Exception as exc:
            if len(batch) > 1:
                log.warning("group commit failed, writing one by one", error=_describe(exc))
                for piece in batch:
                    await self._commit([piece])
                return
            _settle(batch[0].future, exc=exc)
            return
        self.commits += 1
        self.writes += len(batch)
        for piece, result in zip(batch, results, strict=True):
            _settle(piece.future, result=result)


async def _run_all(conn: AsyncConnection, batch: list[_Piece]) -> list[Any]:
    results: list[Any] = []
    inserts: list[Rows] = []
    for piece in batch:
        if isinstance(piece.work, Rows):
            inserts.append(piece.work)
            results.append(None)
            continue
        await _insert(conn, inserts)  # what came before runs before
        inserts = []
        results.append(await piece.work(conn))
    await _insert(conn, inserts)
    return results


async def _insert(conn: AsyncConnection, inserts: list[Rows]) -> None:
    merged: dict[Table, list[dict[str, Any]]] = {}
    for rows in inserts:
        for table, values in rows.tables:
            merged.setdefault(table, []).extend(values)
    for table, values in merged.items():
        if values:
            await conn.execute(table.insert(), values)


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, exc: Exception | None = None
) -> None:
    if future.done():
        return
    with contextlib.suppress(asyncio.InvalidStateError):
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}"
