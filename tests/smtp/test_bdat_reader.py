"""The DATA reader in BDAT mode (raw chunks, no dot-stuffing, no end marker): properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp.data import DataProblem, DataReader

STREAM_BYTES = st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"\0", b"a", b"A: b", b"x" * 30, b"\r\n.\r\n"]),
    max_size=60,
).map(b"".join)
LINE_BYTES = st.binary(max_size=40).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)


def read_raw(data: bytes, cuts: list[int] | None, **options: object) -> DataReader:
    reader = DataReader(dot_stuffed=False, **options)  # type: ignore[arg-type]
    pos = 0
    for cut in cuts or []:
        reader.feed_raw(data[pos : pos + cut])
        pos += cut
    reader.feed_raw(data[pos:])
    reader.end_raw()
    return reader


def content(reader: DataReader) -> bytes:
    reader.body.seek(0)
    separator = b"\r\n" if reader.blank_line else b""
    return reader.header_block + separator + reader.body.read()


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(LINE_BYTES, max_size=30), cuts=st.lists(st.integers(0, 50), max_size=20))
def test_clean_lines_come_out_as_they_went_in(lines: list[bytes], cuts: list[int]) -> None:
    # Dots, fake ends of data, commands: BDAT bytes are content, never unstuffed.
    original = b"".join(ln + b"\r\n" for ln in lines)
    reader = read_raw(original, cuts)
    assert reader.problem is None
    assert content(reader) == original
    assert reader.size == len(original)


@settings(max_examples=300, deadline=None)
@given(stream=STREAM_BYTES, cuts=st.lists(st.integers(0, 20), max_size=30), norm=st.booleans())
def test_any_split_of_the_chunks_gives_the_same_result(
    stream: bytes, cuts: list[int], norm: bool
) -> None:
    options = {"max_line_length": 40, "max_header_size": 60, "max_size": 300}
    whole = read_raw(stream, None, normalize_bare_line_endings=norm, **options)
    split = read_raw(stream, cuts, normalize_bare_line_endings=norm, **options)
    assert whole.problem == split.problem and whole.size == split.size
    if whole.problem is None:
        assert content(whole) == content(split)


@given(
    st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=30),
    st.integers(min_value=1, max_value=64),
)
def test_the_line_limit_agrees_with_a_line_by_line_count(lengths: list[int], chunk: int) -> None:
    limit = 20
    lines = [b"." + b"z" * n + b"\r\n" for n in lengths]
    # No stuffing: a line starting with a dot gets no extra byte, unlike with DATA.
    expected = any(len(line) > limit for line in lines)
    stream = b"A: b\r\n\r\n" + b"".join(lines)
    reader = read_raw(stream, [chunk] * (len(stream) // chunk + 1), max_line_length=limit)
    assert (reader.problem is DataProblem.LINE_TOO_LONG) is expected


def test_a_last_line_without_crlf_counts_the_crlf_it_gets() -> None:
    assert read_raw(b"A: b\r\n\r\n" + b"z" * 18, None, max_line_length=20).problem is None
    too_long = read_raw(b"A: b\r\n\r\n" + b"z" * 19, None, max_line_length=20)
    assert too_long.problem is DataProblem.LINE_TOO_LONG
