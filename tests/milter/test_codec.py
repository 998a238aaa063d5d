"""The milter codec: every frame round-trips, and bad bytes only ever raise MilterProtocolError."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.milter import codec as c
from mailgate.milter.protocol import Command, Reply

text = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b""))
u32 = st.integers(min_value=0, max_value=2**32 - 1)
args = st.lists(text, max_size=4).map(tuple)

connect = st.one_of(
    st.builds(c.Connect, text, st.just(b"U")),
    st.builds(
        c.Connect,
        text,
        st.sampled_from([b"L", b"4", b"6"]),
        st.integers(min_value=0, max_value=65535),
        text,
    ),
)
commands = st.one_of(
    st.builds(c.OptNeg, u32, u32, u32),
    st.builds(
        c.Macro, st.binary(min_size=1, max_size=1), st.lists(st.tuples(text, text)).map(tuple)
    ),
    connect,
    st.builds(c.Helo, text),
    st.builds(c.Mail, text, args),
    st.builds(c.Rcpt, text, args),
    st.builds(c.Data),
    st.builds(c.Header, text, text),
    st.builds(c.EndOfHeaders),
    st.builds(c.Body, st.binary(max_size=200)),
    st.builds(c.EndOfMessage, st.binary(max_size=20)),
    st.builds(c.Abort),
    st.builds(c.Quit),
    st.builds(c.QuitNoClose),
    st.builds(c.Unknown, text),
)
replies = st.one_of(
    st.builds(c.OptNegReply, u32, u32, u32, st.lists(st.tuples(u32, text)).map(tuple)),
    *(
        st.builds(cls)
        for cls in (
            c.Accept,
            c.Continue,
            c.Discard,
            c.Reject,
            c.Tempfail,
            c.Progress,
            c.Skip,
            c.Shutdown,
            c.ConnFail,
        )
    ),
    st.builds(c.ReplyCode, text),
    st.builds(c.Quarantine, text),
    st.builds(c.AddHeader, text, text),
    st.builds(c.InsertHeader, u32, text, text),
    st.builds(c.ChangeHeader, u32, text, text),
    st.builds(c.ReplaceBody, st.binary(max_size=200)),
    st.builds(c.AddRcpt, text),
    st.builds(c.AddRcptPar, text, text),
    st.builds(c.DelRcpt, text),
    st.builds(c.ChangeFrom, text, st.none() | text),
)


@given(st.lists(commands, max_size=8), st.data())
def test_commands_round_trip_however_the_stream_is_cut(
    frames: list[c.Frame], data: st.DataObject
) -> None:
    wire = b"".join(c.encode(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    decoder = c.FrameDecoder("commands")
    out: list[c.Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += decoder.feed(wire[start:end])
    assert out == frames
    assert decoder.pending == 0


@given(st.lists(replies, max_size=8))
def test_replies_round_trip(frames: list[c.Frame]) -> None:
    wire = b"".join(c.encode(f) for f in frames)
    assert c.FrameDecoder("replies").feed(wire) == frames


@given(st.binary(max_size=300), st.sampled_from(["commands", "replies"]))
def test_random_bytes_raise_only_protocol_errors(junk: bytes, direction: c.Direction) -> None:
    decoder = c.FrameDecoder(direction, max_frame=4096)
    with contextlib.suppress(c.MilterProtocolError):
        decoder.feed(junk)


@given(commands | replies, st.data())
def test_truncated_frames_wait_or_fail_cleanly(frame: c.Frame, data: st.DataObject) -> None:
    wire = c.encode(frame)
    keep = data.draw(st.integers(0, len(wire) - 1))
    direction: c.Direction = "commands" if isinstance(frame, c.MilterCommand) else "replies"
    assert c.FrameDecoder(direction).feed(wire[:keep]) == []
    # The same bytes with a length header that claims only what is there: malformed, not a crash.
    body = wire[4:keep] if keep > 4 else wire[4:5]
    decoder = c.FrameDecoder(direction)
    with contextlib.suppress(c.MilterProtocolError):
        decoder.feed(len(body).to_bytes(4, "big") + body)


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    decoder = c.FrameDecoder("commands", max_frame=1000)
    with pytest.raises(c.MilterProtocolError, match="exceeds the limit of 1000"):
        decoder.feed((5000).to_bytes(4, "big") + b"B")


def test_zero_length_frame_is_refused() -> None:
    with pytest.raises(c.MilterProtocolError, match="length 0"):
        c.FrameDecoder("commands").feed(b"\0\0\0\0")


def test_unknown_code_is_named_in_the_error() -> None:
    with pytest.raises(c.MilterProtocolError, match=r"unknown command code b'z'"):
        c.FrameDecoder("commands").feed(b"\0\0\0\x01z")


def test_connect_wire_form_matches_libmilter() -> None:
    wire = c.encode(c.Connect(b"mail.example", b"4", 2525, b"192.0.2.1"))
    assert wire == b"\0\0\0\x1bCmail.example\x004\x09\xdd192.0.2.1\0"


def test_eight_bit_header_values_survive() -> None:
    frame = c.Header(b"Subject", b"\xe9t\xe9 \xff\r\n\tfolded")
    assert c.FrameDecoder("commands").feed(c.encode(frame)) == [frame]


def test_optneg_reply_carries_macro_lists() -> None:
    frame = c.OptNegReply(6, 0x1FF, 0, ((0, b"j {client_addr}"), (2, b"i {auth_authen}")))
    wire = c.encode(frame)
    assert wire[5:17] == b"\0\0\0\x06\0\0\x01\xff\0\0\0\0"
    assert wire[17:21] == b"\0\0\0\0"
    assert c.FrameDecoder("replies").feed(wire) == [frame]


def test_every_code_has_a_frame_class() -> None:
    command_codes = {cls.code for cls in c.MilterCommand.__args__}
    reply_codes = {cls.code for cls in c.MilterReply.__args__}
    assert command_codes == {m.value for m in Command}
    assert reply_codes == {m.value for m in Reply} - {Reply.SETSYMLIST.value}


def test_strings_with_nul_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="NUL"):
        c.encode(c.Helo(b"a\0b"))


@given(text, text)
def test_encode_header_is_encode_of_a_header_frame(name: bytes, value: bytes) -> None:
    assert c.encode_header(name, value) == c.encode(c.Header(name, value))


@given(st.binary(min_size=1, max_size=1), st.lists(st.tuples(text, text), max_size=6))
def test_encode_macro_is_encode_of_a_macro_frame(
    stage: bytes, pairs: list[tuple[bytes, bytes]]
) -> None:
    macros = tuple(pairs)
    assert c.encode_macro(stage, macros) == c.encode(c.Macro(stage, macros))


@given(st.binary(max_size=300))
def test_body_head_and_chunk_make_a_body_frame(chunk: bytes) -> None:
    assert c.body_head(len(chunk)) + chunk == c.encode(c.Body(chunk))


@pytest.mark.parametrize(
    "encode",
    [
        lambda: c.encode_header(b"X-A", b"a\0b"),
        lambda: c.encode_macro(b"M", ((b"i", b"a\0b"),)),
        lambda: c.encode_macro(b"M", ((b"{a\0}", b"v"),)),
        lambda: c.encode_macro(b"MM", ()),
    ],
)
def test_fast_encoders_refuse_what_encode_refuses(encode: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        encode()


def test_repeated_macro_frames_decode_to_the_same_frame_and_the_cache_stays_bounded() -> None:
    small = c.encode(c.Macro(b"L", ((b"i", b"4ABC"),)))
    large = c.encode(c.Macro(b"M", ((b"{mail_addr}", b"a" * 600),)))
    decoder = c.FrameDecoder("commands")
    first, again, big = decoder.feed(small + small + large)
    assert first == again == c.Macro(b"L", ((b"i", b"4ABC"),))
    assert big == c.Macro(b"M", ((b"{mail_addr}", b"a" * 600),))
    for n in range(3 * 512):  # distinct small payloads: the cache is emptied, never grows past
        [frame] = decoder.feed(c.encode(c.Macro(b"R", ((b"i", str(n).encode()),))))
        assert frame == c.Macro(b"R", ((b"i", str(n).encode()),))
        assert len(c._macro_cache) <= 512
    assert all(len(payload) <= 512 for payload in c._macro_cache)
