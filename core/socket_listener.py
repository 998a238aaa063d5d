"""`SocketListener`: the TCP or unix-socket server under the listeners an MTA connects to.

The milter listener and the policy listener differ only in what one connection runs; binding
(removing a stale unix socket, setting its mode), keeping track of the running connections,
and closing them at `stop` are here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import stat

from mailgate.logging import get_logger
from mailgate.sockaddr import SocketAddress

log = get_logger("mailgate.listener")


class SocketListener:
    """Accepts connections on `address` and runs `handle` for each, as its own task.

    `kind` names the protocol in log lines (``milter``, ``policy``). A unix socket gets
    `socket_mode` (the MTA's user must be able to connect) and is removed at `stop`.
    """

    kind = "socket"

    def __init__(self, address: SocketAddress, name: str, socket_mode: int) -> None:
        self.name = name
        self.socket_mode = socket_mode
        self._address = address
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sock: socket.socket | None = None
        """A socket already bound and listening (a worker's, from its master): `start` serves
        it instead of binding `address`, and `stop` leaves a unix socket's path to the master."""

    @property
    def port(self) -> int:
        """The TCP port actually bound (0 for a unix socket or before `start`)."""
        if self._server is None or self._address.is_unix:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        """Where the listener is, as Postfix spells it (``inet:HOST:PORT`` or ``unix:/path``)."""
        return dataclasses.replace(self._address, port=self.port).milter_spec

    async def start(self) -> None:
        """Bind the socket and start accepting connections."""
        addr = self._address
        if addr.is_unix and self.sock is None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(addr.path).st_mode):
                    os.unlink(addr.path)  # a stale socket from a previous run
        self._server = await self.open_server(addr)
        if addr.is_unix and self.sock is None:
            os.chmod(addr.path, self.socket_mode)
        log.info(f"{self.kind} listener started", listener=self.name, address=self.address)

    async def open_server(self, addr: SocketAddress) -> asyncio.Server:
        """The bound server; by default each connection runs `handle` with asyncio streams."""
        if self.sock is not None:
            if addr.is_unix:
                return await asyncio.start_unix_server(self._serve, sock=self.sock)
            return await asyncio.start_server(self._serve, sock=self.sock)
        if addr.is_unix:
            return await asyncio.start_unix_server(self._serve, path=addr.path)
        return await asyncio.start_server(self._serve, addr.host, addr.port, reuse_address=True)

    def track(self, task: asyncio.Task[None]) -> None:
        """Count `task` among the running connections until it ends (`stop` cancels them)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop accepting, close running connections and remove a unix socket."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self._address.is_unix and self.sock is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address.path)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, then wait up to `timeout` seconds for the running connections to
        end by themselves (a worker's SIGTERM); `stop` then closes what is left."""
        if self._server is None:
            return
        self._server.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (what the subclass's protocol does)."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except asyncio.CancelledError:
            # `stop` cancels running connections; asyncio's stream callback would log the
            # cancellation as an error if it escaped this task.
            writer.close()
        except Exception:
            log.exception(f"{self.kind} connection failed", listener=self.name)
            writer.close()
        finally:
            self._tasks.discard(task)
