"""directory_sql: the directory in an SQL database (SQLite or PostgreSQL), queries as settings.

Each query is a SELECT with named parameters among ``:address``, ``:local``, ``:domain`` and
``:login``; only the first column of the rows is read::

    recipient_query = "SELECT target FROM aliases WHERE source = :address
                       UNION SELECT address FROM mailboxes WHERE address = :address"
    senders_query   = "SELECT address FROM mailboxes WHERE login = :login"
    password_query  = "SELECT password FROM mailboxes WHERE login = :login"

A recipient with at least one row exists; the rows that are not the address itself are where
it delivers (an alias or a list). A query left empty means this backend has no opinion on that
question. Passwords are checked as `mailgate.directory.passwords` describes.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mailgate.directory import NOT_FOUND, Entry, Question, passwords
from mailgate.directory.cache import CacheSettings
from mailgate.plugin import PluginContext, hookimpl
from mailgate.plugins.directory.backend import Backend, expansion, parts
from mailgate.store.settings import database_url

_PARAM = re.compile(r"(?<!:):([A-Za-z_]\w*)")
PARAMETERS = frozenset({"address", "local", "domain", "login"})


@dataclass(slots=True)
class DirectorySqlSettings(CacheSettings):
    """The keys of ``conf.d/NN-directory_sql.toml``."""

    url: str = ""
    """``sqlite:////path/users.db`` or ``postgresql://user:password@host/db`` (required)."""
    recipient_query: str = ""
    """Rows for an existing recipient: the addresses it delivers to (itself, or an alias's
    targets)."""
    senders_query: str = ""
    """The addresses a login may send as (``@domain``: the whole domain)."""
    password_query: str = ""
    """The login's password hash (first row, first column)."""
    domains: list[str] = field(default_factory=list)
    """Recipients of other domains get no opinion; empty: every domain."""

    def __post_init__(self) -> None:
        database_url(self.url)
        for key in ("recipient_query", "senders_query", "password_query"):
            query = getattr(self, key)
            if not query:
                continue
            if not query.lstrip().lower().startswith(("select", "with")):
                raise ValueError(f"{key}: must be a SELECT")
            unknown = set(_PARAM.findall(query)) - PARAMETERS
            if unknown:
                raise ValueError(
                    f"{key}: unknown parameter :{sorted(unknown)[0]} "
                    "(use :address, :local, :domain or :login)"
                )
        if not (self.recipient_query or self.senders_query or self.password_query):
            raise ValueError("set at least one of recipient_query, senders_query, password_query")
        self.check()


@dataclass(frozen=True, slots=True)
class HashedPassword:
    """Credentials as a stored hash; checked in a thread (SHA-crypt takes milliseconds)."""

    stored: str

    async def verify(self, secret: str) -> bool:
        """True if `secret` matches; `UnknownScheme` for a hash that cannot be checked."""
        return await asyncio.to_thread(passwords.verify, self.stored, secret)


class DirectorySql:
    """Answers the `directory` hook from SQL queries (see the module docstring)."""

    Settings = DirectorySqlSettings
    reads: frozenset[str] = frozenset()

    def __init__(self, settings: DirectorySqlSettings) -> None:
        self.settings = settings
        self.backend = Backend(settings, settings.domains)
        self._url = database_url(settings.url)
        self._engine: AsyncEngine | None = None
        self._queries = {
            Question.RECIPIENT: settings.recipient_query,
            Question.SENDERS: settings.senders_query,
            Question.CREDENTIALS: settings.password_query,
        }

    def _get_engine(self) -> AsyncEngine:
        if self._engine is None:
            args: dict[str, Any] = {}
            if self._url.drivername.startswith("postgresql"):
                args = {"connect_args": {"timeout": self.settings.lookup_timeout}, "pool_size": 2}
            self._engine = create_async_engine(self._url, pool_pre_ping=True, **args)
        return self._engine

    async def start(self, context: PluginContext) -> None:
        """Show the cache on ``/metrics``."""
        self.backend.count_in(context, "sql")

    async def stop(self) -> None:
        """Close the database connections."""
        self.backend.stop_counting()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def rows(self, query: str, subject: str) -> list[str]:
        """The first column of `query`'s rows for `subject` (as strings)."""
        values = parts(subject)
        params = {k: values[k] for k in set(_PARAM.findall(query))}
        async with self._get_engine().connect() as conn:
            result = await conn.execute(text(query), params)
            return [str(row[0]) for row in result if row[0] is not None]

    async def fetch(self, question: Question, subject: str) -> Entry:
        """Ask the database (no cache)."""
        found = await self.rows(self._queries[question], subject)
        if not found:
            return NOT_FOUND
        if question is Question.CREDENTIALS:
            return Entry(True, credentials=HashedPassword(found[0]))
        if question is Question.SENDERS:
            return Entry(True, addresses=tuple(found))
        return Entry(True, addresses=expansion(subject, found))

    @hookimpl
    async def directory(self, question: Question, subject: str) -> Entry | None:
        """The (cached) answer; None for a question without a query or a foreign domain."""
        if not self._queries[question]:
            return None
        return await self.backend.answer(question, subject, lambda: self.fetch(question, subject))
