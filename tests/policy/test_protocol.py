"""The policy protocol codec: requests split and parsed, replies and actions written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.policy.protocol import (
    PolicyProtocolError,
    RequestReader,
    encode_request,
    format_reply,
    parse_reply,
    prepend_action,
    verdict_action,
)
from mailgate.verdict import Verdict

POSTFIX_REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=127.0.0.1\nclient_port=37878\nhelo_name=vm\nsender=a@example.com\n"
    b"recipient=bob@local.test\nrecipient_count=0\nqueue_id=\ninstance=5128.6b07b3b6.51e0e.0\n"
    b"size=0\nccert_subject=\nencryption_keysize=0\npolicy_context=\n\n"
)
"""A request as Postfix 3.7 sends it (shortened)."""


def test_a_postfix_request_is_read_whole() -> None:
    (attrs,) = RequestReader(65536).feed(POSTFIX_REQUEST)
    assert attrs["protocol_state"] == "RCPT"
    assert attrs["recipient"] == "bob@local.test"
    assert attrs["queue_id"] == "" and attrs["policy_context"] == ""
    assert attrs["instance"] == "5128.6b07b3b6.51e0e.0"


def test_requests_split_across_reads_and_several_in_one_read() -> None:
    reader = RequestReader(65536)
    assert reader.feed(POSTFIX_REQUEST[:50]) == []
    assert reader.pending
    first = reader.feed(POSTFIX_REQUEST[50:] + POSTFIX_REQUEST + POSTFIX_REQUEST[:10])
    assert len(first) == 2 and first[0] == first[1]
    assert len(reader.feed(POSTFIX_REQUEST[10:])) == 1
    assert not reader.pending


def test_a_value_may_contain_equals_signs_and_crlf_lines_are_accepted() -> None:
    reader = RequestReader(65536)
    (attrs,) = reader.feed(b"request=smtpd_access_policy\r\nccert_subject=CN=a,O=b\r\n\r\n")
    assert attrs == {"request": "smtpd_access_policy", "ccert_subject": "CN=a,O=b"}


@pytest.mark.parametrize(
    "data",
    [
        b"request=smtpd_access_policy\ngarbage line\n\n",
        b"=value\n\n",
        b"\n",
        b"name\0=x\n\n",
        b" name=x\n\n",
    ],
)
def test_a_malformed_request_is_refused(data: bytes) -> None:
    with pytest.raises(PolicyProtocolError):
        RequestReader(65536).feed(data)


def test_a_malformed_line_is_refused_before_the_request_ends() -> None:
    with pytest.raises(PolicyProtocolError, match="garbage"):
        RequestReader(65536).feed(b"request=smtpd_access_policy\ngarbage\n")


def test_a_request_larger_than_the_limit_is_refused_complete_or_not() -> None:
    with pytest.raises(PolicyProtocolError, match="larger than 1024"):
        RequestReader(1024).feed(b"sender=" + b"a" * 2000 + b"\n\n")
    with pytest.raises(PolicyProtocolError, match="larger than 1024"):
        RequestReader(1024).feed(b"sender=" + b"a" * 2000)
    assert len(RequestReader(1024).feed(b"sender=" + b"a" * 1000 + b"\n\n")) == 1


def test_replies() -> None:
    assert format_reply("DUNNO") == b"action=DUNNO\n\n"
    assert format_reply("550 5.7.1 two\nlines") == b"action=550 5.7.1 two lines\n\n"
    assert parse_reply(b"action=HOLD why\n\n") == "HOLD why"
    with pytest.raises(PolicyProtocolError):
        parse_reply(b"action=DUNNO\n")


def test_verdicts_become_access_actions() -> None:
    assert verdict_action(None) == "DUNNO"
    assert verdict_action(Verdict.accept()) == "DUNNO"
    assert verdict_action(Verdict.reject(554, "5.7.9", "No, plugin")) == "554 5.7.9 No, plugin"
    assert verdict_action(Verdict.tempfail()) == "451 4.7.1 Temporary failure, try again later"
    assert verdict_action(Verdict.disconnect("Bye")) == "421 4.7.0 Bye"
    assert verdict_action(Verdict.reject(550, "", "No")) == "550 No"
    assert verdict_action(Verdict.reject(550, "5.7.1", "a\nb")) == "550 5.7.1 a b"
    assert verdict_action(Verdict.discard(reason="spam")) == "DISCARD spam"
    assert verdict_action(Verdict.quarantine(reason="odd")) == "HOLD odd"
    assert verdict_action(Verdict.quarantine()) == "HOLD by mailgate policy"
    assert prepend_action("X-Seen", "yes\r\n\tfolded") == "PREPEND X-Seen: yes folded"


# -- properties ------------------------------------------------------------------------------------

names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=20)
values = (
    st.text(max_size=200)
    .filter(lambda v: "\n" not in v and "\0" not in v)
    .map(lambda v: v.rstrip("\r"))
)


@given(st.lists(st.dictionaries(names, values, min_size=1, max_size=12), max_size=4), st.data())
def test_requests_round_trip_however_the_bytes_are_cut(
    requests: list[dict[str, str]], data: st.DataObject
) -> None:
    wire = b"".join(encode_request(r) for r in requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    reader = RequestReader(1 << 20)
    got: list[dict[str, str]] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += reader.feed(wire[start:end])
    assert got == requests
    assert not reader.pending


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_bytes_never_crash_the_reader(chunks: list[bytes]) -> None:
    reader = RequestReader(2048)
    try:
        for chunk in chunks:
            for attrs in reader.feed(chunk):
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items())
    except PolicyProtocolError:
        pass


@given(st.text(max_size=300))
def test_any_action_text_makes_one_well_formed_reply(text: str) -> None:
    reply = format_reply(text)
    assert reply.count(b"\n") == 2 and reply.endswith(b"\n\n")
    action = parse_reply(reply)
    assert not {"\r", "\n", "\0"} & set(action)
    assert action == action.strip()
