"""The directory cache: answers kept for a while, so a busy server asks its directory little.

Found answers live for ``ttl`` seconds, not-found answers for ``negative_ttl`` (shorter: a
new mailbox should not wait long), at most ``size`` of them (the least recently used go
first). Failures are never cached. Questions asked at the same time for the same subject
share one lookup, so a burst of sessions does not become a burst of queries. Every lookup
has ``lookup_timeout`` seconds; past it the lookup raises `TimeoutError` (the backend's
``on_error`` then applies).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailgate.directory import Entry, Question


@dataclass(slots=True)
class CacheSettings:
    """The cache and timeout keys every bundled directory backend has."""

    ttl: float = 300.0
    """Seconds a found answer is kept."""
    negative_ttl: float = 60.0
    """Seconds a not-found answer is kept."""
    size: int = 10000
    """Most answers kept; 0: no cache."""
    lookup_timeout: float = 5.0
    """Seconds one lookup may take (connecting included)."""

    def check(self) -> None:
        """Raise `ValueError` naming the key that is out of range."""
        if self.ttl < 0 or self.negative_ttl < 0:
            raise ValueError("cache ttl and negative_ttl must be 0 or more")
        if self.size < 0:
            raise ValueError("cache size must be 0 or more")
        if self.lookup_timeout <= 0:
            raise ValueError("lookup_timeout must be positive")


Key = tuple[Question, str]


class DirectoryCache:
    """A bounded TTL cache of directory answers, keyed by question and subject (no case)."""

    def __init__(self, settings: CacheSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self._entries: OrderedDict[Key, tuple[float, Entry]] = OrderedDict()
        self._pending: dict[Key, asyncio.Future[Entry]] = {}
        self.hits = 0
        """Lookups answered from the cache."""
        self.misses = 0
        """Lookups asked of the backend (or joined to one already asked)."""
        self.failures = 0
        """Lookups asked of the backend that failed (an error or the timeout)."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, question: Question, subject: str) -> Entry | None:
        """The cached answer, or None when there is none or it expired."""
        key = (question, subject.lower())
        item = self._entries.get(key)
        if item is None:
            return None
        expires, entry = item
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, question: Question, subject: str, entry: Entry) -> None:
        """Keep `entry` for its TTL (found or not), dropping the oldest past `size`."""
        ttl = self.settings.ttl if entry.found else self.settings.negative_ttl
        if self.settings.size == 0 or ttl == 0:
            return
        key = (question, subject.lower())
        self._entries[key] = (self._clock() + ttl, entry)
        self._entries.move_to_end(key)
        while len(self._entries) > self.settings.size:
            self._entries.popitem(last=False)

    async def lookup(
        self, question: Question, subject: str, fetch: Callable[[], Awaitable[Entry]]
    ) -> Entry:
        """The cached answer, or `fetch`'s (within `timeout`, shared with concurrent askers)."""
        cached = self.get(question, subject)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        key = (question, subject.lower())
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            async with asyncio.timeout(self.settings.lookup_timeout):
                entry = await fetch()
        except BaseException as exc:
            self.failures += 1
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            del self._pending[key]
        future.set_result(entry)
        self.put(question, subject, entry)
        return entry
