"""The node's counters: one table of `limits` counts that every worker of the node shares.

The ``limits`` plugin keeps its counts in memory, per process. Under workers the master holds
them instead and serves them on a unix socket in the node directory (``counters.sock``); the
plugin's memory backend talks to it when ``$MAILGATE_NODE_COUNTERS`` names that socket (see
`mailgate.plugins.limits.node_counters`). A limit of 10 connections a minute is then 10 for the
node, not 10 per worker.

The protocol is one JSON object per line each way. A request carries an ``id`` (answers come
in any order), an ``op`` (``add``, ``acquire``, ``release``), the table's ``shape``
(``[max_keys, sliding]``) and the arguments of `Counters`; the answer carries the ``id``,
``allowed`` and ``count``, or ``error``. Concurrent slots belong to the connection that took
them: a worker that dies gives its slots back when its connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from mailgate.logging import get_logger
from mailgate.plugins.limits.counters import MemoryCounters

log = get_logger("mailgate.workers")

MAX_LINE = 64 * 1024
"""Longest request line; a longer one closes the connection (keys are expression results)."""


class CounterServer:
    """Serves the node's `MemoryCounters` tables on the unix socket `path`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tables: dict[tuple[int, bool], MemoryCounters] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on `path` (only this user may connect)."""
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _table(self, shape: Any) -> MemoryCounters:
        max_keys, sliding = int(shape[0]), bool(shape[1])
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        table = self.tables.get((max_keys, sliding))
        if table is None:
            table = self.tables[(max_keys, sliding)] = MemoryCounters(max_keys, sliding=sliding)
        return table

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: set[tuple[int, bool, str, str, str]] = set()
        try:
            while line := await reader.readline():
                try:
                    answer = await self._answer(json.loads(line), held)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    answer = {"error": str(exc)[:200]}
                    with contextlib.suppress(Exception):
                        answer["id"] = json.loads(line)["id"]
                writer.write(json.dumps(answer).encode() + b"\n")
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            log.warning("node counters connection dropped", error=str(exc)[:200])
        finally:
            for max_keys, sliding, name, key, token in held:
                await self._table((max_keys, sliding)).release(name, key, token)
            writer.close()

    async def _answer(
        self, request: dict[str, Any], held: set[tuple[int, bool, str, str, str]]
    ) -> dict[str, Any]:
        op, table = request["op"], self._table(request["shape"])
        name, key = str(request["name"]), str(request["key"])
        slot = (table.max_keys, table.sliding, name, key, str(request.get("token", "")))
        if op == "add":
            hit = await table.add(
                name, key, int(request["amount"]), int(request["limit"]), float(request["window"])
            )
        elif op == "acquire":
            hit = await table.acquire(name, key, slot[4], int(request["limit"]))
            if hit.allowed:
                held.add(slot)
        elif op == "release":
            await table.release(name, key, slot[4])
            held.discard(slot)
            return {"id": request["id"], "allowed": True, "count": 0}
        else:
            raise ValueError(f"unknown op {op!r}")
        return {"id": request["id"], "allowed": hit.allowed, "count": hit.count}
