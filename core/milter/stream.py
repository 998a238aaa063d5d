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

from mailgate.protocol_stream import HIGH_WATER, ProtocolStream


class MilterStream(ProtocolStream):
    """One connection's input and output; `serve` runs as the connection's task."""

    def __init__(
        self,
        serve: Callable[[MilterStream], Coroutine[Any, Any, None]],
        *,
        high_water: int = HIGH_WATER,
    ) -> None:
        super().__init__(serve, high_water=high_water)
        self._chunks: list[bytes] = []
        self._size = 0
        self._closed: asyncio.Future[None] | None = None
        self._error: Exception | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._received(self._size)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # half-open: what is already queued still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._error = exc
        super().connection_lost(exc)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

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
        await self._writable()
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
