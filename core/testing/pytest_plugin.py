"""The pytest fixtures of `mailgate.testing` (loaded through the ``pytest11`` entry point).

Every fixture is named ``mailgate_...``, so none collides with a project's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.testing.confdir import ConfDir
from mailgate.testing.result import Result, run_message
from mailgate.testing.server import Server
from mailgate.testing.sink import Sink

TryMessage = Callable[..., Result]


@pytest.fixture
def mailgate_conf(tmp_path: Path) -> ConfDir:
    """An empty configuration directory (``tmp_path/conf.d``) to write a test's set-up into."""
    return ConfDir(tmp_path / "conf.d")


@pytest.fixture
def mailgate_try(mailgate_conf: ConfDir) -> TryMessage:
    """``mailgate_try(message, sender=..., recipients=[...], client=..., auth=...)`` runs the
    message through ``mailgate_conf`` as ``mailgate try`` does and returns a `Result`.

    From an ``async def`` test, ``await mailgate.testing.run_message(mailgate_conf, ...)``
    instead: this one runs its own event loop.
    """

    def run(message: bytes | str, **options: Any) -> Result:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run_message(mailgate_conf.path, message, **options))
        raise RuntimeError(
            "mailgate_try runs its own event loop: in an async test, "
            "await mailgate.testing.run_message(mailgate_conf, message, ...)"
        )

    return run


@pytest.fixture
def mailgate_sink() -> Iterator[Sink]:
    """An SMTP sink on loopback that keeps every message (`Sink.messages`, `Sink.wait_for`)."""
    with Sink() as sink:
        yield sink


@pytest.fixture
def mailgate_server(
    mailgate_conf: ConfDir, mailgate_sink: Sink, tmp_path: Path
) -> Iterator[Callable[[], Server]]:
    """``mailgate_server()`` starts ``mailgate serve`` on ``mailgate_conf``, relaying into
    ``mailgate_sink``, and returns the `Server` (``server.port``); it is stopped after the test.
    Write the configuration first: the server reads it when it starts."""
    servers: list[Server] = []

    def start() -> Server:
        server = Server(
            mailgate_conf.path, mailgate_sink.address, log_path=tmp_path / "mailgate.log"
        )
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()
