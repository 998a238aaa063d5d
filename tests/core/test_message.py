"""The message model: header parsing, header modifications, body spooling."""

import io

from hypothesis import given
from hypothesis import strategies as st

from mailgate.message import Header, Message, new_spool, parse_header_block

RAW = (
    b"From: Alice <alice@example.com>\r\n"
    b"Subject: a long\r\n\tfolded subject\r\n"
    b"X-Two: first\r\n"
    b"X-Two:second-no-space\r\n"
)


def _message(raw: bytes = RAW, body: bytes = b"Hello\r\n") -> Message:
    spool = new_spool()
    spool.write(body)
    return Message(parse_header_block(raw), spool)


def test_headers_are_written_back_byte_for_byte() -> None:
    msg = _message()
    assert msg.header_bytes() == RAW + b"\r\n"


def test_folded_header_value_keeps_its_folding() -> None:
    msg = _message()
    assert msg.get("subject") == "a long\r\n\tfolded subject"


def test_change_and_delete_address_the_nth_occurrence() -> None:
    msg = _message()
    msg.change_header("x-two", 2, "changed")
    assert msg.get_all("X-Two") == ["first", "changed"]
    msg.delete_header("X-Two", 1)
    assert msg.get_all("X-Two") == ["changed"]
    msg.delete_header("X-Two", 5)
    assert msg.get_all("X-Two") == ["changed"]


def test_change_of_a_missing_header_appends_it() -> None:
    msg = _message()
    msg.change_header("X-New", 1, "v")
    assert msg.headers[-1].to_bytes() == b"X-New: v\r\n"


def test_insert_header_at_zero_puts_it_first_and_past_the_end_appends() -> None:
    msg = _message()
    msg.insert_header(0, "Received", "from x")
    msg.insert_header(99, "X-Last", "y")
    assert msg.headers[0].name == "Received"
    assert msg.headers[-1].name == "X-Last"


def test_body_past_the_threshold_lives_on_disk() -> None:
    spool = new_spool(threshold=1024)
    spool.write(b"x" * 4096)
    assert spool._rolled  # type: ignore[attr-defined]
    msg = Message([], spool)
    assert msg.body_size == 4096
    assert b"".join(msg.iter_body(1000)) == b"x" * 4096


def test_replace_body_updates_size_and_content() -> None:
    msg = _message()
    msg.replace_body(io.BytesIO(b"new body\r\n"))
    assert msg.body_size == 10
    assert b"".join(msg.iter_bytes()) == RAW + b"\r\nnew body\r\n"


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True)
_values = st.from_regex(r"( [ -~]{0,30})(\r\n[ \t][ -~]{1,30}){0,2}", fullmatch=True)


@given(st.lists(st.tuples(_names, _values), max_size=20))
def test_parse_then_write_round_trips(fields: list[tuple[str, str]]) -> None:
    block = b"".join(Header(n, v).to_bytes() for n, v in fields)
    parsed = parse_header_block(block)
    assert [(h.name, h.raw_value) for h in parsed] == fields
    assert b"".join(h.to_bytes() for h in parsed) == block


def test_interleaved_body_readers_each_get_the_whole_body() -> None:
    body = bytes(range(256)) * 1024
    msg = _message(body=body)
    first, second = msg.iter_body(1000), msg.iter_body(1000)
    a, b = [], []
    for x, y in zip(first, second, strict=True):
        a.append(x)
        b.append(y)
    assert b"".join(a) == body
    assert b"".join(b) == body
