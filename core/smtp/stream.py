"""`SmtpStream`: the bytes of one SMTP connection, as an asyncio Protocol.

What the client sent waits in this object's own buffer, not in a library's, so the session can
ask whether a whole command is already there (RFC 2920: replies to pipelined commands go out
together), can throw away what was sent in clear text before STARTTLS (CVE-2011-0411), and can
put back what followed the end of DATA. Reading pauses while the buffer holds more than
`high_water` bytes; writing waits while the transport's buffer is full. Inbound BDAT reads
exact byte counts from the same buffer (`read_chunk` with a limit), and a PROXY protocol header
is parsed in place before the greeting (`peek`, `skip`, `wait_for_more`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from mailgate.protocol_stream import HIGH_WATER, ProtocolStream


class StreamClosed(Exception):
    """The client closed the connection or it was lost."""


class SmtpStream(ProtocolStream):
    """One connection's input buffer and output batch; `serve` runs as the connection's task."""

    def __init__(
        self,
        serve: Callable[[SmtpStream], Coroutine[Any, Any, None]],
        *,
        high_water: int = HIGH_WATER,
    ) -> None:
        super().__init__(serve, high_water=high_water)
        self._buffer = bytearray()
        self._out: list[bytes] = []

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._received(len(self._buffer))

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Keep the transport open: the replies to what was sent still go out (a TLS transport
        # closes on its own, and says so if asked to stay open).
        return self.extra("ssl_object") is None

    # -- reading ---------------------------------------------------------------------------------

    @property
    def peer(self) -> tuple[str, int]:
        """The client's address and port."""
        info = self.transport.get_extra_info("peername") if self.transport else None
        return (str(info[0]), int(info[1])) if info else ("", 0)

    def extra(self, name: str) -> Any:
        """Transport information (``ssl_object``, ``sockname``)."""
        return self.transport.get_extra_info(name) if self.transport else None

    def line_waiting(self) -> bool:
        """True if a whole line has already arrived."""
        return self._buffer.find(b"\n") >= 0

    async def read_line(self, max_length: int, timeout: float) -> bytes | None:
        """The next line with its line end; None if it was longer than `max_length` (it is
        skipped up to and including its LF, without holding it in memory)."""
        skipping = False
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                self._consume(end + 1)
                if skipping or len(line) > max_length:
                    return None
                return line
            if len(self._buffer) > max_length:
                skipping = True
                self._consume(len(self._buffer))
            await self._more(timeout)

    async def read_chunk(self, timeout: float, limit: int = 0) -> bytes:
        """Whatever has arrived, at most `limit` bytes if it is not 0 (waiting for something
        if nothing has)."""
        if not self._buffer:
            await self._more(timeout)
        size = min(limit, len(self._buffer)) if limit else len(self._buffer)
        chunk = bytes(self._buffer[:size])
        self._consume(size)
        return chunk

    def peek(self, limit: int) -> bytes:
        """Up to `limit` bytes that have arrived, left in the buffer."""
        return bytes(self._buffer[:limit])

    def skip(self, size: int) -> None:
        """Drop the first `size` bytes of the buffer (read with `peek`)."""
        self._consume(size)

    async def wait_for_more(self, timeout: float) -> None:
        """Wait until more bytes arrive; `StreamClosed` if the client has closed."""
        await self._more(timeout)

    def unread(self, data: bytes) -> None:
        """Put `data` back in front of the buffer (what followed the end of DATA)."""
        if data:
            self._buffer[:0] = data

    def discard_input(self) -> None:
        """Forget everything received and not yet read (clear text before STARTTLS)."""
        self._consume(len(self._buffer))

    async def _more(self, timeout: float) -> None:
        if self._eof:
            raise StreamClosed
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None
        if self._eof and not self._buffer:
            raise StreamClosed

    def _consume(self, size: int) -> None:
        del self._buffer[:size]
        if self._reading_paused and len(self._buffer) <= self._high_water // 2:
            self._reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- writing ---------------------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        """Add a reply to the batch `flush` writes."""
        self._out.append(data)

    @property
    def queued(self) -> bool:
        """True if replies wait to be written."""
        return bool(self._out)

    async def flush(self) -> None:
        """Write the queued replies, in order, in one write; wait while the transport is full."""
        if not self._out or self.transport is None or self.transport.is_closing():
            self._out.clear()
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self.transport.write(data)
        await self._writable()
        if self._lost:
            raise StreamClosed

    def write_and_close(self, data: bytes = b"") -> None:
        """Write the queued replies and `data`, then close (no waiting)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"".join([*self._out, data]))
        self._out.clear()
        self.transport.close()

    # -- TLS -------------------------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """Switch to TLS as the server; raises `ssl.SSLError`/`OSError` if the handshake fails.

        What the client sent in clear text after STARTTLS is dropped first: it must never be
        read as if it had come through TLS.
        """
        assert self.transport is not None
        self.discard_input()
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport, self, context, server_side=True, ssl_handshake_timeout=timeout
        )
        if transport is None:
            raise ConnectionError("TLS handshake: the connection closed")
        self.transport = transport
