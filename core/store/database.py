"""`Store`: one SQLAlchemy async engine on SQLite or PostgreSQL, migrated at start.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit returns only after the write-ahead
log is on disk (an fsync), so a crash or a power cut after it keeps the data. PostgreSQL keeps
its own durability (``synchronous_commit``, on by default). Either way, a message is answered
250 only after its transaction committed.

Migrations are Alembic revisions shipped in ``migrations/``; `Store.open` applies the missing
ones (``upgrade head``) before anything else uses the store, under an advisory lock on
PostgreSQL so that nodes starting together do not race.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mailgate.logging import get_logger
from mailgate.store.settings import StoreSettings

log = get_logger("mailgate.store")

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
_UPGRADE_LOCK = 0x6D61696C67617465  # "mailgate": the advisory lock held while migrating


class Store:
    """The database behind the queue. `open` before use, `close` at shutdown."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.dialect = settings.dialect
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The open engine; raises if `open` was not called."""
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    async def open(self) -> None:
        """Create the engine and bring the schema to the newest revision."""
        if self._engine is not None:
            return
        self._engine = self._create_engine()
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(_upgrade, self.dialect)
        except BaseException:
            await self.close()
            raise
        log.info("store open", url=self.settings.redacted(), dialect=self.dialect)

    def _create_engine(self) -> AsyncEngine:
        settings = self.settings
        url = settings.async_url()
        if self.dialect == "sqlite":
            assert url.database is not None  # checked by StoreSettings
            path = Path(url.database)
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            # Somebody's mail is in it (the queue, the quarantine): private to mailgate's user.
            # SQLite gives its -wal and -shm files the database file's permissions.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            engine = create_async_engine(
                url, connect_args={"timeout": settings.busy_timeout}, pool_size=4
            )
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas(settings.busy_timeout))
            return engine
        return create_async_engine(
            url,
            pool_size=settings.pool_size,
            pool_pre_ping=True,
            connect_args={"timeout": settings.busy_timeout},
        )

    async def transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `work` in one transaction, committed (durably) before this returns."""
        async with asyncio.timeout(self.settings.transaction_timeout):
            async with self.engine.begin() as conn:
                return await work(conn)

    async def close(self) -> None:
        """Close every connection."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()


def _sqlite_pragmas(busy_timeout: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def _upgrade(conn: Connection, dialect: str) -> None:
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def like_literal(text: str) -> str:
    """`text` inside a LIKE pattern, matched as itself: ``%``, ``_`` and the escape character
    escaped (use the pattern with ``escape="\\"``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
