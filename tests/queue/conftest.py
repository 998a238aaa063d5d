"""Fixtures for the queue tests: a store on SQLite and on PostgreSQL, and in-process nodes."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailgate.app import App
from tests.apps import started_apps
from tests.queue.helpers import write_config

_databases = itertools.count(1)

AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: an SQLite file, or a database of the session's PostgreSQL
    (asked for at run time, so that variant carries the ``peer`` marker itself)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/mailgate.db"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.create_database(f"queue{next(_databases)}"))


@pytest.fixture
async def queue_app(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """``await queue_app(store_url, next_hop, queue={...}, store={...})``: a started `App`
    whose listener queues; stopped after the test."""
    async with started_apps() as apps:

        async def factory(store_url: str, next_hop: str, **tables: Any) -> App:
            plugin_files = tables.pop("plugin_files", {})
            directory = write_config(tmp_path / f"conf{len(apps)}", store_url, next_hop, **tables)
            for name, text in plugin_files.items():
                (directory / name).write_text(text)
            return await apps.start(directory)

        yield factory
