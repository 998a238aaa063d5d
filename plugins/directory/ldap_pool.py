"""The search connections of directory_ldap: up to N bound connections, each used by one
worker thread at a time, so lookups that miss the cache run side by side instead of queueing
behind one connection.

ldap3's connections are blocking and not meant to be shared by threads mid-request: a thread
takes an idle connection (or opens one, while fewer than N are open), searches, and gives it
back; a connection that failed is closed, not given back. A thread that finds all N busy waits
at most the lookup's time limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    """What the pool needs of a connection: a way to close it (ldap3's ``unbind``)."""

    def unbind(self) -> object: ...


C = TypeVar("C", bound=Closable)


class ConnectionPool(Generic[C]):
    """At most `size` connections made by `open_connection`; idle ones are reused, newest
    first (the one most likely to be still open on the server's side)."""

    def __init__(self, size: int, open_connection: Callable[[], C]) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.size = size
        self._open_connection = open_connection
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[C] = []
        self._closed = False
        self.opened = 0
        """Connections opened so far (for tests and the curious)."""

    @contextmanager
    def connection(self, wait: float, *, fresh: bool = False) -> Iterator[C]:
        """One connection for this thread's request, waiting up to `wait` seconds for a free
        one; `fresh`: a new connection, not an idle one (a retry after a broken one). Raises
        `TimeoutError` if none came free; the connection is closed if the block raises."""
        if not self._slots.acquire(timeout=wait):
            raise TimeoutError(f"all {self.size} LDAP connections busy for {wait:g}s")
        try:
            conn = None
            with self._lock:
                if self._idle and not fresh:
                    conn = self._idle.pop()
            if conn is None:
                conn = self._open_connection()
                with self._lock:
                    self.opened += 1
            try:
                yield conn
            except BaseException:
                conn.unbind()
                raise
            with self._lock:
                if not self._closed:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.unbind()
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections; busy ones are closed when they are given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.unbind()
