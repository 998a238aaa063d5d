"""`ConsoleServer`: the console's Starlette app, served by uvicorn inside mailgate's loop."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator

import uvicorn

from mailgate.console.settings import ConsoleSettings
from mailgate.console.web import Node, build
from mailgate.logging import get_logger
from mailgate.sockaddr import parse_host_port

log = get_logger("mailgate.console")


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handlers: mailgate's own (SIGTERM, SIGHUP) stay."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    """`start` listens (raises `OSError` when it cannot bind); `stop` closes."""

    def __init__(self, settings: ConsoleSettings, node: Node) -> None:
        self.settings = settings
        host, port = parse_host_port(settings.address, key="console.address")
        config = uvicorn.Config(
            build(settings, node),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (for ``address = "127.0.0.1:0"``)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="console")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # its error: the address could not be bound
                raise OSError("the console stopped while starting")
            await asyncio.sleep(0.01)
        scheme = "https" if self.settings.tls_cert else "http"
        log.info("console started", url=f"{scheme}://{self.settings.address}/")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await task
