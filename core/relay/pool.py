"""A bounded pool of idle downstream connections, reused only when known to be clean."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable

from mailgate.relay.connection import DownstreamConnection
from mailgate.relay.settings import RelaySettings


class ConnectionPool:
    """Hands out downstream connections: the most recently used idle one, or a new one.

    A connection comes back through `release` only after a clean end of a transaction (a 2xx
    after the data, or a successful RSET); anything doubtful goes to `discard`. At most
    `pool_size` connections wait idle, each for at most `idle_timeout` seconds.

    New connections go to `address` (default: ``settings.address``'s ``else`` value; the relay
    keeps one pool per address its rules can choose), or are made by `opener` when given (the
    queue's routes: failover hosts, MX hosts, a TLS policy of their own).
    """

    def __init__(
        self,
        settings: RelaySettings,
        opener: Callable[[], Awaitable[DownstreamConnection]] | None = None,
        *,
        address: str = "",
    ) -> None:
        self._settings = settings
        self.address = address or settings.address.default
        """Where this pool's connections go."""
        self._helo = settings.helo_name or socket.gethostname()
        self._tls = _tls_context(settings) if opener is None else None
        self._opener = opener or self._open
        self._idle: list[DownstreamConnection] = []
        self._closed = False
        self.opened = 0
        """Connections opened so far (for tests and metrics)."""

    @property
    def idle(self) -> int:
        """How many connections wait in the pool now."""
        return len(self._idle)

    @property
    def helo_name(self) -> str:
        """The name mailgate gives in EHLO."""
        return self._helo

    async def acquire(self, owner: str = "") -> tuple[DownstreamConnection, bool]:
        """A connection and whether it was reused; raises `DownstreamError` if none can open.

        An idle connection already handed to client `owner` with XCLIENT comes first, then one
        that is still mailgate's own; a connection handed to another client is never given.
        """
        while (conn := self._take_idle(owner)) is not None:
            if conn.alive:
                return conn, True
            conn.close()
        conn = await self._opener()
        self.opened += 1
        return conn, False

    async def _open(self) -> DownstreamConnection:
        return await DownstreamConnection.open(
            self._settings, self._helo, self._tls, address=self.address
        )

    def _take_idle(self, owner: str) -> DownstreamConnection | None:
        found = None
        for conn in reversed(self._idle):
            if conn.owner == owner:
                found = conn
                break
            if not conn.owner and found is None:
                found = conn
        if found is None:
            return None
        self._idle.remove(found)
        if found.idle_timer is not None:
            found.idle_timer.cancel()
            found.idle_timer = None
        return found

    async def open_new(self) -> DownstreamConnection:
        """A fresh connection, bypassing the pool (after a pooled one turned out stale)."""
        conn = await self._opener()
        self.opened += 1
        return conn

    def release(self, conn: DownstreamConnection) -> None:
        """Take back a connection that ended a transaction cleanly."""
        conn.messages += 1
        limit = self._settings.max_messages_per_connection
        if (
            self._closed
            or not conn.alive
            or len(self._idle) >= self._settings.pool_size
            or (limit and conn.messages >= limit)
        ):
            conn.quit()
            return
        conn.idle_timer = asyncio.get_running_loop().call_later(
            self._settings.idle_timeout, self._expire, conn
        )
        self._idle.append(conn)

    def discard(self, conn: DownstreamConnection) -> None:
        """Drop a connection whose state is in doubt."""
        conn.close()

    def _expire(self, conn: DownstreamConnection) -> None:
        conn.idle_timer = None
        if conn in self._idle:
            self._idle.remove(conn)
        conn.quit()

    def close(self) -> None:
        """QUIT every idle connection; connections in use are closed when they come back."""
        self._closed = True
        while self._idle:
            self._idle.pop().quit()


def _tls_context(settings: RelaySettings) -> ssl.SSLContext | None:
    if settings.starttls == "never":
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
