"""The milter listener: mailgate as a milter for Postfix (or sendmail), on TCP or a unix socket.

Every connection runs the same plugin chain as the SMTP listener. The sockets are tuned for
the milter's ping-pong traffic: TCP_NODELAY, each group of replies in one write, and
TCP_QUICKACK re-armed after every read, which removes the two ~40 ms Nagle/delayed-ACK stalls
that libmilter milters suffer on TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mailgate.milter.connection import MilterConnection
from mailgate.milter.settings import MilterListenerSettings
from mailgate.pipeline import Pipeline
from mailgate.socket_listener import SocketListener


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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One MTA connection: the milter protocol with this moment's plugin chain."""
        await MilterConnection(reader, writer, self.settings, self.pipeline()).run()
