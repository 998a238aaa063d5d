"""The policy listener: accepts Postfix's ``check_policy_service`` connections (TCP or unix)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import stat
from collections.abc import Callable

import structlog

from mailgate.pipeline import Pipeline
from mailgate.policy.connection import PolicyConnection
from mailgate.policy.settings import PolicyListenerSettings

log = structlog.get_logger("mailgate.policy")


class PolicyListener:
    """Serves policy connections; each SMTP session gets the pipeline current at its start.

    `pipeline` is called at every new SMTP session, not once per connection: Postfix keeps a
    policy connection for many sessions (up to ``smtpd_policy_service_max_ttl``, 1000 s by
    default), and a configuration reload should reach the next session.
    """

    def __init__(
        self, settings: PolicyListenerSettings, *, pipeline: Callable[[], Pipeline]
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._address = settings.socket_address
        self.connections = 0
        """Connections accepted so far (Postfix keeps each for many SMTP sessions)."""

    @property
    def port(self) -> int:
        """The TCP port actually bound (0 for a unix socket or before `start`)."""
        if self._server is None or self._address.is_unix:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        """Where the listener is, as ``check_policy_service`` spells it (``inet:`` or ``unix:``)."""
        return dataclasses.replace(self._address, port=self.port).milter_spec

    async def start(self) -> None:
        """Bind the socket and start accepting connections."""
        addr = self._address
        if addr.is_unix:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(addr.path).st_mode):
                    os.unlink(addr.path)  # a stale socket from a previous run
            self._server = await asyncio.start_unix_server(self._serve, path=addr.path)
            os.chmod(addr.path, self.settings.socket_mode)
        else:
            self._server = await asyncio.start_server(
                self._serve, addr.host, addr.port, reuse_address=True
            )
        log.info("policy listener started", listener=self.settings.name, address=self.address)

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
        if self._address.is_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await PolicyConnection(reader, writer, self.settings, self.pipeline).run()
        except asyncio.CancelledError:
            # `stop` cancels running connections; asyncio's stream callback would log the
            # cancellation as an error if it escaped this task.
            writer.close()
        except Exception:
            log.exception("policy connection failed", listener=self.settings.name)
            writer.close()
        finally:
            self._tasks.discard(task)
