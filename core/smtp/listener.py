"""`SmtpListener`: accepts SMTP connections and serves each with an `SmtpConnection`.

The socket is the project's `SocketListener`; each connection is an `SmtpStream` (an asyncio
Protocol) whose task runs the session.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from mailgate.egress import Egress
from mailgate.logging import get_logger
from mailgate.pipeline import Pipeline
from mailgate.quarantine import Quarantine
from mailgate.smtp.connection import ListenerState, SmtpConnection
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.smtp.stream import SmtpStream
from mailgate.sockaddr import SocketAddress
from mailgate.socket_listener import SocketListener

log = get_logger("mailgate.smtp")

_SHUTDOWN = b"421 4.3.2 Service shutting down\r\n"
_BACKLOG = 512


class SmtpListener(SocketListener):
    """An SMTP server socket in front of the pipeline and an egress.

    ``pipeline`` is called once per connection, so a session keeps the plugin chain it started
    with when the configuration is reloaded. ``egress`` is where accepted messages go;
    ``quarantine`` keeps the messages plugins hold, when the egress cannot.
    """

    kind = "smtp"

    def __init__(
        self,
        settings: SmtpListenerSettings,
        *,
        pipeline: Callable[[], Pipeline],
        egress: Egress,
        quarantine: Quarantine | None = None,
    ) -> None:
        host, port = settings.host_port
        super().__init__(SocketAddress(host=host, port=port), settings.name, 0o666)
        self.settings = settings
        self._pipeline = pipeline
        self._egress = egress
        self._quarantine = quarantine
        self._state: ListenerState | None = None

    async def start(self) -> None:
        """Bind the socket and start accepting connections."""
        hostname = self.settings.hostname or await asyncio.to_thread(socket.getfqdn)
        self._state = ListenerState(
            settings=self.settings,
            hostname=hostname,
            pipeline=self._pipeline,
            egress=self._egress,
            tls_context=self._tls_context(),
            quarantine=self._quarantine,
        )
        await super().start()

    async def open_server(self, addr: SocketAddress) -> asyncio.Server:
        """A server whose connections are `SmtpStream` protocols."""
        state = self._state
        assert state is not None

        async def serve(stream: SmtpStream) -> None:
            task = asyncio.current_task()
            if task is not None:
                self.track(task)
            await SmtpConnection(state, stream).run()

        loop = asyncio.get_running_loop()
        if self.sock is not None:
            return await loop.create_server(lambda: SmtpStream(serve), sock=self.sock)
        return await loop.create_server(
            lambda: SmtpStream(serve),
            addr.host or None,
            addr.port,
            reuse_address=True,
            backlog=_BACKLOG,
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        return server_tls_context(self.settings)

    def reload_tls(self) -> None:
        """Read the certificate and key files again (SIGHUP: a renewed certificate is served to
        new sessions); if they no longer load, the old ones stay and an error is logged."""
        if self._state is None or not self.settings.tls_cert:
            return
        try:
            self._state.tls_context = self._tls_context()
        except (OSError, ssl.SSLError) as exc:
            log.error("certificate reload failed, keeping the old one", error=str(exc))
            return
        log.info("certificate reloaded", listener=self.name, cert=self.settings.tls_cert)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close every open session (421), and wait for their clean-up."""
        state = self._state
        if state is None:
            return
        connections = list(state.connections)
        for connection in connections:
            connection.shut_down(_SHUTDOWN)
        tasks = [c.task for c in connections if c.task is not None and not c.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await super().stop()
        self._state = None


def server_tls_context(settings: SmtpListenerSettings) -> ssl.SSLContext | None:
    """The STARTTLS context of a listener: its certificate, TLS 1.2 or later, its ciphers."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if settings.tls_min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    )
    if settings.tls_ciphers:
        context.set_ciphers(settings.tls_ciphers)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context
