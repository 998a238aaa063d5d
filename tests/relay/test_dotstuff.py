"""The streaming dot-stuffer: independent of chunk splits, equal to a reference, invertible."""

from __future__ import annotations

import itertools
import re

from hypothesis import given
from hypothesis import strategies as st

from mailgate.relay.dotstuff import DotStuffer, stuff, unstuff

# Bytes rich in what matters: dots, CR, LF, NUL.
_data = st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"\x00", b".."]), max_size=60
).map(b"".join) | st.binary(max_size=200)

_REFERENCE = re.compile(rb"(?:^|(?<=[\r\n]))\.")


def reference(data: bytes) -> bytes:
    """A line starts at the beginning and after any CR or LF; its leading dot is doubled."""
    return _REFERENCE.sub(b"..", data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(_data, st.lists(st.integers(min_value=0), max_size=8))
def test_any_chunk_split_gives_the_reference_bytes(data: bytes, cuts: list[int]) -> None:
    stuffer = DotStuffer()
    out = b"".join(stuffer.feed(chunk) for chunk in split(data, cuts))
    assert out == reference(data)


@given(_data)
def test_unstuff_inverts_stuff(data: bytes) -> None:
    assert unstuff(stuff(data)) == data


@given(_data, st.lists(st.integers(min_value=0), max_size=8))
def test_stuffed_data_never_contains_an_end_marker(data: bytes, cuts: list[int]) -> None:
    stuffer = DotStuffer()
    out = b"".join(stuffer.feed(chunk) for chunk in split(data, cuts)) + stuffer.end()
    # The only lone "." line is the terminator at the very end, whatever the line endings.
    body = out[: -len(b".\r\n")]
    for eol in (b"\r", b"\n"):
        for end in (b"\r", b"\n"):
            assert eol + b"." + end not in body
    assert not body.startswith(b".\r") and not body.startswith(b".\n")
    assert out.endswith(b"\r\n.\r\n")


def test_end_adds_the_missing_crlf() -> None:
    stuffer = DotStuffer()
    stuffer.feed(b"no newline")
    assert stuffer.end() == b"\r\n.\r\n"
    stuffer = DotStuffer()
    stuffer.feed(b"line\r\n")
    assert stuffer.end() == b".\r\n"


def test_dot_after_bare_cr_and_bare_lf_is_stuffed() -> None:
    assert stuff(b"a\r.b\n.c\r\n.d") == b"a\r..b\n..c\r\n..d"
