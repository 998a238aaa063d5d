"""The DATA reader: end of data, dot-stuffing, bare line endings, limits, any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp.data import DataProblem, DataReader
from tests.smtp.helpers import FAKE_ENDS


def read(
    stream: bytes, chunks: list[int] | None = None, **options: object
) -> tuple[DataReader, int]:
    """Feed `stream` cut at `chunks` (sizes); return the reader and the bytes it used."""
    reader = DataReader(**options)  # type: ignore[arg-type]
    pos = 0
    sizes = [*(chunks or []), len(stream)]
    for size in sizes:
        chunk = stream[pos : pos + max(size, 1)]
        used = reader.feed(chunk)
        if used >= 0:
            return reader, pos + used
        pos += len(chunk)
        if pos >= len(stream):
            break
    return reader, -1


def body(reader: DataReader) -> bytes:
    reader.body.seek(0)
    return reader.body.read()


def test_data_ends_on_crlf_dot_crlf_and_leaves_what_follows() -> None:
    stream = b"Subject: hi\r\n\r\nline\r\n.\r\nMAIL FROM:<x>\r\n"
    reader, used = read(stream)
    assert stream[used:] == b"MAIL FROM:<x>\r\n"
    assert reader.problem is None
    assert reader.header_block == b"Subject: hi\r\n"
    assert body(reader) == b"line\r\n"


def test_empty_message_ends_at_first_line() -> None:
    reader, used = read(b".\r\nQUIT\r\n")
    assert used == 3 and reader.header_block == b"" and body(reader) == b""


def test_dot_stuffing_is_undone() -> None:
    reader, _ = read(b"A: b\r\n\r\n..\r\n...x\r\n.y\r\n.\r\n")
    assert body(reader) == b".\r\n..x\r\ny\r\n"


def test_body_starts_at_first_line_that_is_not_a_header() -> None:
    reader, _ = read(b"A: b\r\nnot a header\r\nmore\r\n.\r\n")
    assert reader.header_block == b"A: b\r\n" and not reader.blank_line
    assert body(reader) == b"not a header\r\nmore\r\n"


def test_folded_header_stays_in_header_block() -> None:
    reader, _ = read(b"A: b\r\n c\r\nD: e\r\n\r\nx\r\n.\r\n")
    assert [(h.name, h.raw_value) for h in reader.headers] == [("A", " b\r\n c"), ("D", " e")]


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_fake_end_of_data_is_content_and_refused(fake_end: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nhi\r\n"
    stream = b"A: b\r\n\r\nfirst" + fake_end + smuggled + b".\r\nQUIT\r\n"
    reader, used = read(stream)
    assert stream[used:] == b"QUIT\r\n"
    expected = DataProblem.NUL if b"\0" in fake_end else DataProblem.BARE_LINE_ENDING
    assert reader.problem is expected


@pytest.mark.parametrize("fake_end", FAKE_ENDS[:8], ids=repr)
def test_normalizing_turns_bare_endings_into_crlf_content(fake_end: bytes) -> None:
    stream = b"A: b\r\n\r\nfirst" + fake_end + b"MAIL FROM:<evil@x.test>\r\n.\r\n"
    reader, used = read(stream, normalize_bare_line_endings=True)
    assert used == len(stream) and reader.problem is None
    data = body(reader)
    assert b"\r\n" in data and data.count(b"\n") == data.count(b"\r\n")
    assert data.count(b"\r") == data.count(b"\r\n")
    assert data.endswith(b"MAIL FROM:<evil@x.test>\r\n")


def test_nul_is_refused_even_when_normalizing() -> None:
    reader, _ = read(b"A: b\r\n\r\nx\0y\r\n.\r\n", normalize_bare_line_endings=True)
    assert reader.problem is DataProblem.NUL


def test_long_line_is_refused_but_read_to_the_end() -> None:
    stream = b"A: b\r\n\r\n" + b"x" * 5000 + b"\r\nok\r\n.\r\nNOOP\r\n"
    reader, used = read(stream, [100] * 60, max_line_length=1000)
    assert reader.problem is DataProblem.LINE_TOO_LONG
    assert stream[used:] == b"NOOP\r\n"


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        (b"y" * 997 + b"\r\n", False),  # one below: 999 bytes with the CRLF
        (b"y" * 998 + b"\r\n", False),  # at the limit: 1,000 bytes with the CRLF
        (b"y" * 999 + b"\r\n", True),  # one above: 1,001 bytes
        (b".." + b"y" * 997 + b"\r\n", False),  # 1,000 bytes once the stuffed dot is undone
        (b".." + b"y" * 998 + b"\r\n", True),  # 1,001 bytes even without the stuffed dot
    ],
)
@pytest.mark.parametrize("chunk", [7, 1000, 100_000])
def test_the_line_limit_counts_the_crlf_exactly(line: bytes, refused: bool, chunk: int) -> None:
    stream = b"A: b\r\n\r\nfirst\r\n" + line + b"last\r\n.\r\n"
    reader, _ = read(stream, [chunk] * (len(stream) // chunk + 1), max_line_length=1000)
    assert (reader.problem is DataProblem.LINE_TOO_LONG) is refused


def test_header_block_too_big() -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(100))
    reader, _ = read(headers + b"\r\nbody\r\n.\r\n", max_header_size=1000)
    assert reader.problem is DataProblem.HEADER_TOO_BIG


def test_message_too_big() -> None:
    reader, used = read(b"A: b\r\n\r\n" + (b"z" * 78 + b"\r\n") * 10 + b".\r\n", max_size=500)
    assert reader.problem is DataProblem.TOO_BIG and used > 0


# -- properties ----------------------------------------------------------------------------

LINE_BYTES = st.binary(max_size=40).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)


def stuff(lines: list[bytes]) -> bytes:
    """RFC 5321 section 4.5.2 transparency, the sender side."""
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(LINE_BYTES, max_size=30), cuts=st.lists(st.integers(1, 50), max_size=20))
def test_unstuffing_round_trips_with_a_stuffer(lines: list[bytes], cuts: list[int]) -> None:
    original = b"".join(ln + b"\r\n" for ln in lines)
    stream = stuff(lines) + b".\r\nNEXT"
    reader, used = read(stream, cuts)
    assert reader.problem is None and stream[used:] == b"NEXT"
    separator = b"\r\n" if reader.blank_line else b""
    assert reader.header_block + separator + body(reader) == original


STREAM_BYTES = st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"\0", b"a", b"A: b", b"x" * 30, b"\r\n.\r\n"]),
    max_size=60,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(stream=STREAM_BYTES, cuts=st.lists(st.integers(1, 20), max_size=30), norm=st.booleans())
def test_any_split_of_the_stream_gives_the_same_result(
    stream: bytes, cuts: list[int], norm: bool
) -> None:
    stream += b"\r\n.\r\ntail"
    options = {"max_line_length": 40, "max_header_size": 60, "max_size": 300}
    whole, used_whole = read(stream, None, normalize_bare_line_endings=norm, **options)
    split, used_split = read(stream, cuts, normalize_bare_line_endings=norm, **options)
    assert used_whole == used_split
    assert whole.problem == split.problem
    assert whole.size == split.size
    if whole.problem is None:
        assert whole.header_block == split.header_block
        assert body(whole) == body(split)


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=40)), min_size=1, max_size=30
    ),
    st.integers(min_value=1, max_value=64),
)
def test_the_line_limit_agrees_with_a_line_by_line_count(
    shape: list[tuple[bool, int]], chunk: int
) -> None:
    limit = 20
    lines = [(b".." if dotted else b"") + b"z" * n + b"\r\n" for dotted, n in shape]
    # On the wire a stuffed line may be one byte longer than the limit, no other may.
    expected = any(len(line) > limit + line.startswith(b".") for line in lines)
    stream = b"A: b\r\n\r\n" + b"".join(lines) + b".\r\n"
    reader, used = read(stream, [chunk] * (len(stream) // chunk + 1), max_line_length=limit)
    assert used == len(stream)
    assert (reader.problem is DataProblem.LINE_TOO_LONG) is expected
