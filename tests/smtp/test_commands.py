"""Parsing MAIL FROM / RCPT TO arguments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.smtp.commands import parse_params, parse_path

ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-+_=", min_size=1, max_size=20)
PARAM = st.tuples(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=8),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789;,+", max_size=10),
)


@given(
    local=ATOM, domain=ATOM, params=st.lists(PARAM, max_size=4, unique_by=lambda p: p[0].upper())
)
def test_path_and_params_round_trip(local: str, domain: str, params: list[tuple[str, str]]) -> None:
    address = f"{local}@{domain}"
    words = [f"{k}={v}" if v else k for k, v in params]
    parsed = parse_path(f"<{address}> " + " ".join(words))
    assert parsed == (address, " ".join(words))
    assert parse_params(parsed[1]) == {k.upper(): v or None for k, v in params}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<>", ("", "")),
        ("<a@b.test> SIZE=10", ("a@b.test", "SIZE=10")),
        (" <a@b.test>", ("a@b.test", "")),
        ("a@b.test BODY=8BITMIME", ("a@b.test", "BODY=8BITMIME")),
        ("<@relay.test,@other.test:a@b.test>", ("a@b.test", "")),
        ('<"john doe"@b.test>', ('"john doe"@b.test', "")),
        ('<"a>b"@b.test>', ('"a>b"@b.test', "")),
    ],
)
def test_valid_paths(text: str, expected: tuple[str, str]) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize("text", ["<a@b.test", "<a@b.test>x", "<a b@c.test>", "", "<a\x00@b>"])
def test_malformed_paths(text: str) -> None:
    assert parse_path(text) is None


def test_malformed_params() -> None:
    assert parse_params("SIZE=") is None
    assert parse_params("=1") is None
    assert parse_params("SIZE=1 BODY=8BITMIME") == {"SIZE": "1", "BODY": "8BITMIME"}


@given(PARAM, PARAM)
def test_a_keyword_given_twice_is_malformed(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    words = [f"{first[0]}={first[1]}" if first[1] else first[0]]
    words.append(f"{first[0].lower()}={second[1]}" if second[1] else first[0].lower())
    assert parse_params(" ".join(words)) is None
