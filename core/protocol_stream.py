"""`ProtocolStream`: what the SMTP and milter connections share as asyncio Protocols.

Each connection is one Protocol object that keeps its own input buffer (each kind reads it its
own way) and runs the connection's task. This base holds the parts that are the same: starting
that task, one waiter for more input, pausing reading past a high-water mark, and waiting while
the transport's write buffer is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

HIGH_WATER = 1 << 18
"""Bytes buffered before reading pauses, by default."""


class ProtocolStream(asyncio.Protocol):
    """One connection: its task (`serve` called with this object), input waiter, back-pressure."""

    def __init__(
        self, serve: Callable[[Any], Coroutine[Any, Any, None]], *, high_water: int = HIGH_WATER
    ) -> None:
        self._serve = serve
        self._high_water = high_water
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve(self))
        # else: uvloop calls it again with the TLS transport after STARTTLS.

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _received(self, buffered: int) -> None:
        """After input arrived (`buffered` bytes now wait): pause past the mark, wake the reader."""
        if buffered > self._high_water and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _writable(self) -> None:
        """Wait while the transport's write buffer is over its limit (until the connection is
        lost, which the caller checks)."""
        if self._writing_paused and not self._lost:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
