"""The LDAP search connections' pool on its own: reuse, the bound on open connections, the
wait for a free one, and what happens to a connection that failed. (directory_ldap against a
real slapd is tests/directory/test_ldap.py; here the connections are plain objects, because a
busy or broken connection is what these tests need on demand.)"""

from __future__ import annotations

import threading
import time

import pytest

from mailgate.plugins.directory.ldap_pool import ConnectionPool


class Conn:
    """A connection that only knows whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def unbind(self) -> None:
        self.closed = True


def test_an_idle_connection_is_reused() -> None:
    pool = ConnectionPool(3, Conn)
    with pool.connection(1) as first:
        pass
    with pool.connection(1) as second:
        assert second is first
    assert pool.opened == 1 and not first.closed


def test_up_to_size_connections_are_used_at_once_and_then_callers_wait() -> None:
    pool = ConnectionPool(2, Conn)
    inside = threading.Barrier(3)
    release = threading.Event()

    def hold() -> None:
        with pool.connection(5):
            inside.wait(5)
            release.wait(5)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    inside.wait(5)  # both hold a connection at the same time
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="all 2 LDAP connections busy"), pool.connection(0.2):
        pass
    assert time.monotonic() - started >= 0.2
    release.set()
    for t in holders:
        t.join(5)
    with pool.connection(0.2):
        pass
    assert pool.opened == 2


def test_a_connection_that_failed_is_closed_and_not_given_back() -> None:
    pool = ConnectionPool(2, Conn)
    with pytest.raises(ConnectionError), pool.connection(1) as broken:
        raise ConnectionError("server went away")
    assert broken.closed
    with pool.connection(1) as next_one:
        assert next_one is not broken
    assert pool.opened == 2


def test_fresh_opens_a_new_connection_beside_an_idle_one() -> None:
    pool = ConnectionPool(2, Conn)
    with pool.connection(1) as idle:
        pass
    with pool.connection(1, fresh=True) as fresh:
        assert fresh is not idle
    assert pool.opened == 2


def test_a_failed_open_frees_its_place() -> None:
    def refuse() -> Conn:
        raise ConnectionError("bind failed")

    pool = ConnectionPool(1, refuse)
    for _ in range(3):  # the one place is free again after each failure
        with pytest.raises(ConnectionError), pool.connection(0.1):
            pass


def test_close_closes_idle_connections_now_and_busy_ones_when_given_back() -> None:
    pool = ConnectionPool(2, Conn)
    with pool.connection(1) as idle:
        pass
    with pool.connection(1, fresh=True) as busy:
        pool.close()
        assert idle.closed and not busy.closed
    assert busy.closed


def test_a_pool_needs_a_connection() -> None:
    with pytest.raises(ValueError):
        ConnectionPool(0, Conn)
