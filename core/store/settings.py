"""`StoreSettings`: where mailgate keeps its state (the ``[store]`` table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_URL = "sqlite:////var/lib/mailgate/mailgate.db"

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def database_url(text: str) -> URL:
    """`text` as a URL with the asyncio driver SQLAlchemy uses (aiosqlite, asyncpg); a
    ValueError (``url: ...``) for anything but SQLite and PostgreSQL."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError("url: expected sqlite:///PATH or postgresql://...") from None
    if url.drivername not in _DRIVERS:
        raise ValueError("url: expected sqlite:///PATH or postgresql://... (asyncpg)")
    return url.set(drivername=_DRIVERS[url.drivername])


@dataclass(slots=True)
class StoreSettings:
    """The ``[store]`` table of ``mailgate.toml``: one database for the queue (and, later, the
    DMARC reports and the quarantine)."""

    url: str = DEFAULT_URL
    """``sqlite:////absolute/path.db`` (the default, embedded) or
    ``postgresql://user:password@host:port/database`` (several nodes share one)."""

    busy_timeout: float = 5.0
    """SQLite: seconds a writer waits for another writer's lock before giving up (then the
    client gets 451). PostgreSQL: seconds to wait when connecting."""

    transaction_timeout: float = 30.0
    """Seconds one write transaction (a group commit) may take; past it, 451 for its messages."""

    pool_size: int = 5
    """PostgreSQL: connections kept open per node."""

    def __post_init__(self) -> None:
        url = database_url(self.url)
        if self.dialect == "sqlite" and not url.database:
            raise ValueError("url: a file path (sqlite:////var/lib/mailgate/mailgate.db)")
        if self.busy_timeout <= 0 or self.transaction_timeout <= 0 or self.pool_size < 1:
            raise ValueError("busy_timeout, transaction_timeout and pool_size must be positive")

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return _DRIVERS[make_url(self.url).drivername].partition("+")[0]

    def async_url(self) -> URL:
        """The URL with the asyncio driver SQLAlchemy uses (aiosqlite, asyncpg)."""
        return database_url(self.url)

    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite store; None for PostgreSQL."""
        if self.dialect != "sqlite":
            return None
        database = make_url(self.url).database
        return Path(database) if database else None

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)
