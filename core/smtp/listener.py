"""`SmtpListener`: accepts SMTP connections and serves each with an `SmtpConnection`."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

import structlog

from mailgate.egress import Egress
from mailgate.pipeline import Pipeline
from mailgate.quarantine import QuarantineStore
from mailgate.smtp.connection import ListenerState, SmtpConnection
from mailgate.smtp.settings import SmtpListenerSettings

log = structlog.get_logger("mailgate.smtp")

_SHUTDOWN = b"421 4.3.2 Service shutting down\r\n"


class SmtpListener:
    """An SMTP server socket in front of the pipeline and an egress.

    ``pipeline`` is called once per connection, so a session keeps the plugin chain it started
    with when the configuration is reloaded. ``egress`` is where accepted messages go;
    ``quarantine`` keeps the messages plugins hold, when the egress cannot.
    """

    def __init__(
        self,
        settings: SmtpListenerSettings,
        *,
        pipeline: Callable[[], Pipeline],
        egress: Egress,
        quarantine: QuarantineStore | None = None,
    ) -> None:
        self.settings = settings
        self._pipeline = pipeline
        self._egress = egress
        self._quarantine = quarantine
        self._server: asyncio.Server | None = None
        self._state: ListenerState | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind the socket and start accepting connections."""
        host, port = self.settings.host_port
        hostname = self.settings.hostname or await asyncio.to_thread(socket.getfqdn)
        state = ListenerState(
            settings=self.settings,
            hostname=hostname,
            pipeline=self._pipeline,
            egress=self._egress,
            tls_context=self._tls_context(),
            quarantine=self._quarantine,
        )
        self._state = state
        self._server = await asyncio.get_running_loop().create_server(
            lambda: SmtpConnection(state), host or None, port, reuse_address=True, backlog=512
        )
        log.info("listening", listener=self.settings.name, address=f"{host}:{self.port}")

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close every open session (421), and wait for their clean-up."""
        if self._server is None or self._state is None:
            return
        self._server.close()
        for connection in list(self._state.connections):
            connection.shut_down(_SHUTDOWN)
        await asyncio.sleep(0)
        cleanups = list(self._state.cleanups)
        if cleanups:
            await asyncio.wait(cleanups, timeout=grace)
        await self._server.wait_closed()
        self._server = None
        log.info("stopped", listener=self.settings.name)
