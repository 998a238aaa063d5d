"""`NodeCounters`: the ``limits`` counts of a node's workers, kept by their master.

Under workers (docs/scaling.md) each worker is its own process, so counts in its memory would
let every worker allow the whole limit. The master serves one table to them all over a unix
socket (`mailgate.workers.counters`, whose docstring gives the protocol); this is the worker's
side. One connection per event loop, requests pipelined; a master that does not answer within
`timeout` raises, and the plugin's ``on_error`` applies, as with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

from mailgate.plugins.limits.counters import Hit

ENVIRONMENT = "MAILGATE_NODE_COUNTERS"
"""Names the master's counter socket in a worker's environment; unset in a single process."""


class NodeCounters:
    """`Counters` served by the master on `path`, in its table of shape (`max_keys`, `sliding`)."""

    def __init__(self, path: str, max_keys: int, sliding: bool, timeout: float = 1.0) -> None:
        self.path = path
        self.shape = [max_keys, sliding]
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def add(self, name: str, key: str, amount: int, limit: int, window: float) -> Hit:
        """See `Counters.add`."""
        return await self._ask(
            op="add", name=name, key=key, amount=amount, limit=limit, window=window
        )

    async def acquire(self, name: str, key: str, token: str, limit: int) -> Hit:
        """See `Counters.acquire`."""
        return await self._ask(op="acquire", name=name, key=key, token=token, limit=limit)

    async def release(self, name: str, key: str, token: str) -> None:
        """See `Counters.release`."""
        await self._ask(op="release", name=name, key=key, token=token)

    async def _ask(self, **request: Any) -> Hit:
        async with asyncio.timeout(self.timeout):
            writer = await self._connection()
            ident = next(self._ids)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._waiting[ident] = future
            try:
                line = json.dumps({"id": ident, "shape": self.shape, **request})
                writer.write(line.encode() + b"\n")
                answer = await future
            finally:
                self._waiting.pop(ident, None)
        if "error" in answer:
            raise OSError(f"node counters: {answer['error']}")
        return Hit(bool(answer["allowed"]), int(answer["count"]))

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                reader, self._writer = await asyncio.open_unix_connection(self.path)
                self._reading = asyncio.create_task(self._read(reader), name="node counters")
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                answer = json.loads(line)
                future = self._waiting.get(answer.get("id"))
                if future is not None and not future.done():
                    future.set_result(answer)
        except (ConnectionError, ValueError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            lost = ConnectionError("the master's counter socket closed")
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(lost)

    async def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
