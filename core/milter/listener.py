"""The milter listener: mailgate as a milter for Postfix (or sendmail), on TCP or a unix socket.

Every connection runs the same plugin chain as the SMTP listener. The sockets are tuned for
the milter's ping-pong traffic: TCP_NODELAY, each group of replies in one write, and
TCP_QUICKACK re-armed after every read that gets no reply (a reply carries the ACK), which
removes the two ~40 ms Nagle/delayed-ACK stalls that libmilter milters suffer on TCP. Each
connection is a `MilterStream` protocol, not a pair of asyncio streams: less work per read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from mailgate.logging import get_logger
from mailgate.milter.connection import MilterConnection
from mailgate.milter.settings import MilterListenerSettings
from mailgate.milter.stream import MilterStream
from mailgate.pipeline import Pipeline
from mailgate.sockaddr import SocketAddress
from mailgate.socket_listener import SocketListener

log = get_logger("mailgate.listener")


class MilterListener(SocketListener):
    """Accepts milter connections and serves each with the pipeline current at its start.

    `pipeline` is called once per connection, so a configuration reload (a new `Pipeline`)
    applies to new connections while running ones finish with the chain they started with.
    """

    kind = "milter"

    def __init__(
        self, settings: MilterListenerSettings, *, pipeline: Callable[[], Pipeline]
    ) -> None:
        super().__init__(settings.socket_address, settings.name, settings.socket_mode)
        self.settings = settings
        self.pipeline = pipeline

    async def open_server(self, addr: SocketAddress) -> asyncio.Server:
        """A server whose connections are `MilterStream` protocols (no asyncio streams)."""
        loop = asyncio.get_running_loop()
        factory = functools.partial(MilterStream, self.serve)
        if self.sock is not None:  # a worker serving its master's socket
            if addr.is_unix:
                return await loop.create_unix_server(factory, sock=self.sock)
            return await loop.create_server(factory, sock=self.sock)
        if addr.is_unix:
            return await loop.create_unix_server(factory, path=addr.path)
        return await loop.create_server(factory, addr.host, addr.port, reuse_address=True)

    async def serve(self, stream: MilterStream) -> None:
        """One MTA connection: the milter protocol with this moment's plugin chain."""
        task = asyncio.current_task()
        if task is not None:
            self.track(task)
        try:
            await MilterConnection(stream, self.settings, self.pipeline()).run()
        except asyncio.CancelledError:
            stream.close()  # `stop` cancels running connections
        except Exception:
            log.exception("milter connection failed", listener=self.name)
            stream.close()
