"""Destinations: the places the queue delivers to, each with its connections and its limit.

A destination is a route's fixed next hop (one per route), or one recipient domain of an MX
route. Each has a pool of idle connections (`mailgate.relay.pool.ConnectionPool`), so several
messages to the same place share one connection, and at most `Route.concurrency` connections
in use at once (Postfix's ``default_destination_concurrency_limit``: 20). A new connection
goes to the first host that answers: the next hop's hosts in the order written, or the MX
hosts in RFC 5321 order (`mailgate.queue.mx`); a host that cannot be reached, greets with
anything but 220, or fails the route's TLS policy is skipped for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator

import dns.asyncresolver

from mailgate.logging import get_logger
from mailgate.queue.mx import MailHost, mail_hosts
from mailgate.queue.routes import Route
from mailgate.relay import reply as replies
from mailgate.relay.connection import DownstreamConnection, DownstreamError, TlsError
from mailgate.relay.pool import ConnectionPool
from mailgate.sockaddr import parse_host_port

log = get_logger("mailgate.queue")

MAX_IDLE_DESTINATIONS = 1000
"""Destinations kept while nothing is sent to them (their idle connections close with them)."""


class Destination:
    """One place mail goes (see the module docstring)."""

    def __init__(
        self, route: Route, domain: str, resolver: dns.asyncresolver.Resolver, helo: str
    ) -> None:
        self.route = route
        self.domain = domain
        self.name = domain or ", ".join(route.settings.next_hop)
        """The destination in logs: the recipient domain (MX), or the next hop's hosts."""
        self.pool = ConnectionPool(route.connection, opener=self._open)
        self._resolver = resolver
        self._helo = helo
        self._slots = asyncio.Semaphore(route.concurrency)
        self.users = 0
        """Deliveries using or waiting for a connection now."""
        self.busy = 0
        """Connections in use now."""
        self.peak = 0
        """The most connections in use at once so far."""

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the destination's `Route.concurrency` connections while inside."""
        self.users += 1
        try:
            async with self._slots:
                self.busy += 1
                self.peak = max(self.peak, self.busy)
                try:
                    yield
                finally:
                    self.busy -= 1
        finally:
            self.users -= 1

    async def _open(self) -> DownstreamConnection:
        """A connection to the first host that answers; `DownstreamError` if none does,
        `mailgate.queue.mx.NoRoute` if the domain has no host to try."""
        failures: list[str] = []
        for host, port in await self._hosts():
            where = host.describe(port)
            try:
                return await self._connect(host, port, self.route.tls)
            except TlsError as exc:
                if self.route.settings.tls != "opportunistic":
                    failures.append(f"{where}: {_reason(exc)}")
                else:
                    # Opportunistic TLS that fails is no TLS: the same host again, in clear.
                    log.info("STARTTLS failed, again in clear", host=where, error=_reason(exc))
                    try:
                        return await self._connect(host, port, None)
                    except DownstreamError as again:
                        failures.append(f"{where}: {_reason(again)}")
            except DownstreamError as exc:
                failures.append(f"{where}: {_reason(exc)}")
            log.info("host skipped", destination=self.name, host=where, error=failures[-1])
        raise DownstreamError(replies.unreachable("; ".join(failures)))

    async def _hosts(self) -> list[tuple[MailHost, int]]:
        settings = self.route.settings
        if settings.mx:
            hosts = await mail_hosts(self._resolver, self.domain)
            return [(h, settings.mx_port) for h in hosts]
        found = []
        for hop in settings.next_hop:
            host, port = parse_host_port(hop, key="next_hop")
            found.append((MailHost(host, host), port))
        return found

    async def _connect(
        self, host: MailHost, port: int, tls: ssl.SSLContext | None
    ) -> DownstreamConnection:
        address = MailHost(host.address, host.address).describe(port)
        conn = await DownstreamConnection.open(
            self.route.connection, self._helo, tls, server_name=host.name, address=address
        )
        conn.remote = host.describe(port)
        return conn


class Destinations:
    """Every destination in use, made on first use; those unused go once there are more than
    `MAX_IDLE_DESTINATIONS`."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, helo_name: str) -> None:
        self._resolver = resolver
        self._helo = helo_name or socket.gethostname()
        self._known: dict[tuple[str, str], Destination] = {}

    def get(self, route: Route, domain: str) -> Destination:
        """The destination of `route` for `domain` ("" for a fixed next hop)."""
        key = (route.name, domain)
        found = self._known.get(key)
        if found is None:
            if len(self._known) >= MAX_IDLE_DESTINATIONS:
                self._forget_unused()
            found = self._known[key] = Destination(route, domain, self._resolver, self._helo)
        return found

    def _forget_unused(self) -> None:
        for key, destination in list(self._known.items()):
            if destination.users == 0:
                destination.pool.close()
                del self._known[key]

    def __iter__(self) -> Iterator[Destination]:
        return iter(list(self._known.values()))

    def close(self) -> None:
        """QUIT every idle connection (at shutdown)."""
        for destination in self._known.values():
            destination.pool.close()


def _reason(exc: DownstreamError) -> str:
    return exc.reply.failure or exc.reply.smtp_reply()
