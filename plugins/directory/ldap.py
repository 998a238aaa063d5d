"""directory_ldap: the directory in LDAP, with binds and search filters as settings.

Searches run as ``bind_dn`` (anonymous when empty) under ``base``; a filter's ``{address}``,
``{local}``, ``{domain}`` and ``{login}`` are replaced by the subject's parts, escaped as
RFC 4515 asks. Credentials are checked by binding as the login's entry with the password
given (the directory checks it; mailgate never reads ``userPassword``).

ldap3 is pure Python and blocking: each lookup runs in a worker thread, bounded by the
backend's ``lookup_timeout`` (ldap3's own connect and receive timeouts are set to it too, so the
thread does not outlive it by much). Up to ``connections`` search connections are kept open
(`ConnectionPool`), so lookups that miss the cache run side by side; one that breaks is closed
and the search tried once more on a new one. A bind to check a password uses a connection of
its own.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ldap3
from ldap3.utils.conv import escape_filter_chars

from mailgate.directory import NOT_FOUND, Entry, Question
from mailgate.directory.cache import CacheSettings
from mailgate.plugin import PluginContext, hookimpl
from mailgate.plugins.directory.backend import Backend, expansion, parts
from mailgate.plugins.directory.ldap_pool import ConnectionPool


@dataclass(slots=True)
class DirectoryLdapSettings(CacheSettings):
    """The keys of ``conf.d/NN-directory_ldap.toml``."""

    url: str = ""
    """``ldap://host:389/`` or ``ldaps://host:636/`` (required)."""
    base: str = ""
    """Where searches start, ``dc=example,dc=org`` (required)."""
    bind_dn: str = ""
    """Who searches; empty: anonymous."""
    bind_password: str = ""
    """`bind_dn`'s password."""
    recipient_filter: str = "(|(mail={address})(mailLocalAddress={address}))"
    """Finds an existing recipient; empty: no opinion on recipients."""
    recipient_attributes: list[str] = field(default_factory=lambda: ["rfc822MailMember"])
    """Where a found recipient delivers (an alias's or a list's members); none: itself."""
    senders_filter: str = "(|(uid={login})(mail={login}))"
    """Finds a login's entry for its sender addresses; empty: no opinion."""
    sender_attributes: list[str] = field(default_factory=lambda: ["mail", "mailLocalAddress"])
    """The entry's addresses it may send as."""
    login_filter: str = "(|(uid={login})(mail={login}))"
    """Finds the entry to bind as for SMTP AUTH; empty: no opinion on credentials."""
    connections: int = 4
    """Search connections kept open at most: this many lookups that miss the cache run at
    once; more wait for a free one (within ``lookup_timeout``)."""

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("ldap", "ldaps") or not urlsplit(self.url).hostname:
            raise ValueError("url: expected ldap://host[:port]/ or ldaps://host[:port]/")
        if not self.base:
            raise ValueError("base: the search base (dc=example,dc=org) is required")
        if not 1 <= self.connections <= 64:
            raise ValueError("connections must be between 1 and 64")
        for key in ("recipient_filter", "senders_filter", "login_filter"):
            value = getattr(self, key)
            if value and not (value.startswith("(") and value.endswith(")")):
                raise ValueError(f"{key}: an LDAP filter in parentheses, such as (uid={{login}})")
            try:
                value.format(address="", local="", domain="", login="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"{key}: bad placeholder {exc} (use {{address}}, {{login}}, ...)"
                ) from None
        self.check()


@dataclass(frozen=True, slots=True)
class BindAs:
    """Credentials as an LDAP entry: a password is right if binding as `dn` with it works."""

    plugin: DirectoryLdap
    dn: str

    async def verify(self, secret: str) -> bool:
        """Bind as the entry in a thread (an empty password is refused, not an anonymous bind)."""
        if not secret:
            return False
        async with asyncio.timeout(self.plugin.settings.lookup_timeout):
            return await asyncio.to_thread(self.plugin.bind_as, self.dn, secret)


class DirectoryLdap:
    """Answers the `directory` hook from LDAP searches (see the module docstring)."""

    Settings = DirectoryLdapSettings
    reads: frozenset[str] = frozenset()

    def __init__(self, settings: DirectoryLdapSettings) -> None:
        self.settings = settings
        self.backend = Backend(settings, [])
        url = urlsplit(settings.url)
        self._host = url.hostname or ""
        self._port = url.port or (636 if url.scheme == "ldaps" else 389)
        self._ssl = url.scheme == "ldaps"
        self.pool = ConnectionPool(settings.connections, self._search_connection)
        self._searches = {
            Question.RECIPIENT: (settings.recipient_filter, settings.recipient_attributes),
            Question.SENDERS: (settings.senders_filter, settings.sender_attributes),
            Question.CREDENTIALS: (settings.login_filter, []),
        }

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        # A Server of its own each time: ldap3 keeps the address in use and its availability
        # on the Server, which threads sharing one would race on.
        server = ldap3.Server(
            self._host,
            port=self._port,
            use_ssl=self._ssl,
            get_info=ldap3.NONE,
            connect_timeout=math.ceil(self.settings.lookup_timeout),
        )
        return ldap3.Connection(
            server,
            user=user or None,
            password=password or None,
            receive_timeout=math.ceil(self.settings.lookup_timeout),
            raise_exceptions=False,
        )

    def _search_connection(self) -> ldap3.Connection:
        conn = self._connection(self.settings.bind_dn, self.settings.bind_password)
        if not conn.bind():
            conn.unbind()
            raise ConnectionError(f"LDAP bind failed: {conn.result}")
        return conn

    def search(self, question: Question, subject: str) -> list[tuple[str, dict[str, Any]]]:
        """Run the question's filter (blocking); the entries' DNs and attributes. A pooled
        connection that fails (the server closed it while idle) is closed and the search
        tried once more on a new one."""
        template, attributes = self._searches[question]
        values = {k: escape_filter_chars(v) for k, v in parts(subject).items()}
        query = template.format(**values)
        wait = self.settings.lookup_timeout
        try:
            with self.pool.connection(wait) as conn:
                return self._run(conn, query, attributes)
        except TimeoutError:
            raise
        except Exception:
            with self.pool.connection(wait, fresh=True) as conn:
                return self._run(conn, query, attributes)

    def _run(
        self, conn: ldap3.Connection, query: str, attributes: list[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        conn.search(self.settings.base, query, ldap3.SUBTREE, attributes=attributes or [])
        if conn.result.get("result") not in (0, 32):  # success, noSuchObject
            raise ConnectionError(f"LDAP search failed: {conn.result}")
        return [
            (r["dn"], dict(r.get("attributes", {})))
            for r in conn.response or []
            if r.get("type") == "searchResEntry"
        ]

    def bind_as(self, dn: str, secret: str) -> bool:
        """True if binding as `dn` with `secret` works; False for invalid credentials."""
        conn = self._connection(dn, secret)
        try:
            if conn.bind():
                return True
            if conn.result.get("result") == 49:  # invalidCredentials
                return False
            raise ConnectionError(f"LDAP bind failed: {conn.result.get('description')}")
        finally:
            conn.unbind()

    def fetch_blocking(self, question: Question, subject: str) -> Entry:
        """The answer from LDAP (no cache; blocking)."""
        entries = self.search(question, subject)
        if not entries:
            return NOT_FOUND
        if question is Question.CREDENTIALS:
            if len(entries) > 1:
                raise LookupError(f"login {subject!r} matches {len(entries)} entries")
            return Entry(True, credentials=BindAs(self, entries[0][0]))
        values = [v for _, attrs in entries for values in attrs.values() for v in _list(values)]
        if question is Question.SENDERS:
            return Entry(True, addresses=tuple(dict.fromkeys(values)))
        return Entry(True, addresses=expansion(subject, values))

    async def fetch(self, question: Question, subject: str) -> Entry:
        """The answer from LDAP, in a worker thread."""
        return await asyncio.to_thread(self.fetch_blocking, question, subject)

    async def start(self, context: PluginContext) -> None:
        """Show the cache on ``/metrics``."""
        self.backend.count_in(context, "ldap")

    async def stop(self) -> None:
        """Close the search connections."""
        self.backend.stop_counting()
        self.pool.close()

    @hookimpl
    async def directory(self, question: Question, subject: str) -> Entry | None:
        """The (cached) answer; None for a question whose filter is empty."""
        if not self._searches[question][0]:
            return None
        return await self.backend.answer(question, subject, lambda: self.fetch(question, subject))


def _list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]
