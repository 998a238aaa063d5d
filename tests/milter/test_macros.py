"""Session facts from the MTA's CONNECT frame and macros: numbers are read strictly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.milter import codec as c
from mailgate.milter.macros import new_session


@pytest.mark.parametrize(
    ("port", "expected"),
    [("4711", 4711), ("²", 0), ("١٢", 0), ("1" * 5000, 0), ("65536", 0), ("", 0)],
)
def test_client_port_macro_must_be_ascii_digits(port: str, expected: int) -> None:
    macros = {"client_addr": "192.0.2.1", "client_port": port}
    session = new_session(c.Connect(b"client.test", b"U"), macros, "milter")
    assert (session.client_ip, session.client_port) == ("192.0.2.1", expected)


@given(st.text(max_size=20), st.text(max_size=40))
def test_any_macro_values_make_a_session(port: str, address: str) -> None:
    macros = {"client_addr": address, "client_port": port}
    session = new_session(c.Connect(b"x", b"U"), macros, "milter")
    assert 0 <= session.client_port <= 65535
