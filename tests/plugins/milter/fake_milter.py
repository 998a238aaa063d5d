"""A scripted milter for error paths no real milter produces: hangs, garbage, sudden deaths."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS

CLOSE = b"<close>"
"""A script answer that closes the connection instead of replying."""
HANG = b"<hang>"
"""A script answer that never replies."""

Script = Callable[[c.Frame], bytes | None]
"""What the milter sends back for one frame (None: nothing, the frame needs no reply)."""

NEEDS_NO_REPLY = (c.Macro, c.Abort, c.Quit, c.QuitNoClose)


def plain(frame: c.Frame) -> bytes | None:
    """A well-behaved milter: everything offered, CONTINUE to each step, ACCEPT at the end."""
    if isinstance(frame, c.OptNeg):
        return c.encode(c.OptNegReply(6, int(ALL_ACTIONS), 0))
    if isinstance(frame, NEEDS_NO_REPLY):
        return None
    if isinstance(frame, c.EndOfMessage):
        return c.encode(c.Accept())
    return c.encode(c.Continue())


class FakeMilter:
    """A milter on 127.0.0.1 answering each frame with `script(frame)`; counts connections."""

    def __init__(self, script: Script = plain) -> None:
        self.script = script
        self.connections = 0
        self.frames: list[c.Frame] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """``inet:127.0.0.1:PORT``."""
        assert self.server is not None
        return f"inet:127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> FakeMilter:
        """Listen on a free port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = c.FrameDecoder("commands")
        try:
            while data := await reader.read(1 << 16):
                for frame in decoder.feed(data):
                    self.frames.append(frame)
                    answer = self.script(frame)
                    if answer == HANG:
                        await asyncio.sleep(3600)
                    if answer == CLOSE:
                        return
                    if answer:
                        writer.write(answer)
                await writer.drain()
        except (ConnectionError, c.MilterProtocolError):
            pass
        finally:
            writer.close()
