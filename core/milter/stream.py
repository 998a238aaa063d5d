"""`MilterStream`: the bytes of one milter connection, as an asyncio Protocol.

The milter listener reads whatever has arrived and decodes all the frames in it at once, so it
needs no line or size framing from a stream library: this protocol keeps the chunks the
transport hands over until the connection's task takes them, with one waiter and no copies
(asyncio's StreamReader adds a buffer, a second protocol object and several calls per read,
a measurable share of a message's CPU). Reading pauses while more than `high_water` bytes wait;
writing waits while the transport's buffer is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

_HIGH_WATER = 1 << 18
"""Bytes kept before reading pauses (the frame decoder holds at most one frame more)."""


class MilterStream(asyncio.Protocol):
    """One connection's input and output; `serve` runs as the connection's task."""

    def __init__(
        self,
        serve: Callable[[MilterStream], Coroutine[Any, Any, None]],
        *,
        high_water: int = _HIGH_WATER,
    ) -> None:
        self._serve = serve
        self._high_water = high_water
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = asyncio.get_running_loop().create_task(self._serve(self))

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._high_water and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # half-open: what is already queued still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        if exc is not None:
            self._error = exc
        self._wake()
        for future in (self._drain, self._closed):
            if future is not None and not future.done():
                future.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the connection's side -------------------------------------------------------------------

    def get_extra_info(self, name: str) -> Any:
        """Transport information (``socket``, ``peername``), None once there is no transport."""
        return self.transport.get_extra_info(name) if self.transport is not None else None

    async def read(self) -> bytes:
        """Everything that arrived since the last read, waiting if nothing has; ``b""`` at the
        end of the stream. The error that broke the connection, if one did, is raised instead."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        """Send `data` (the transport buffers what the socket does not take at once)."""
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its limit; raise if the connection is lost."""
        if self._error is not None:
            raise self._error
        if self._writing_paused and not self._lost:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self._lost:
            raise ConnectionResetError("Connection lost")

    def is_closing(self) -> bool:
        """True once the connection is closed or closing."""
        return self._lost or self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        """Close the connection (what is queued is sent first)."""
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the transport has closed."""
        if self._lost:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await self._closed
