"""The relay against a real Postfix, which offers CHUNKING, PIPELINING and refuses by rule.

Postfix's test rules (tests/peers/postfix.py): recipients whose local part starts with
``reject`` get 550, mail to ``@local.test`` lands in a Maildir. Postfix logs per-connection
command counts at disconnect (``mail=2 rcpt=2 bdat=2``), which is how these tests see what was
sent and how many connections were made.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from mailgate.relay import RelayEgress
from mailgate.session import Session
from tests.peers.postfix import DeliveredMessage, Postfix
from tests.peers.workdir import PeerDirs
from tests.relay.helpers import message, relay, session, settings_for, transaction

_tokens = itertools.count(1)


@pytest.fixture(scope="module")
def mta(peer_dirs: PeerDirs) -> Iterator[Postfix]:
    """One Postfix for the module (start-up is the slow part); tests tell their mail apart by
    a unique subject."""
    instance = Postfix(
        peer_dirs.new("postfix"), None, {"message_size_limit": "0", "virtual_mailbox_limit": "0"}
    ).start()
    yield instance
    instance.stop()


@pytest.fixture
async def egress(mta: Postfix) -> AsyncIterator[RelayEgress]:
    eg = RelayEgress(settings_for(mta.host, mta.port))
    yield eg
    await eg.close()


def headers(subject: str) -> bytes:
    return f"From: a@example.com\r\nTo: x@local.test\r\nSubject: {subject}\r\n".encode()


def unique() -> str:
    return f"relay-{time.time_ns()}-{next(_tokens)}"


def delivered(
    mta: Postfix, subject: str, count: int = 1, timeout: float = 10
) -> list[DeliveredMessage]:
    """The Maildir copies of the message with `subject` (one per recipient)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in mta.delivered() if f"Subject: {subject}".encode() in d.data]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def sessions_since(mta: Postfix, mark: int) -> list[str]:
    """The disconnect lines (with command counts) logged after `mark` characters of maillog."""
    return re.findall(r"disconnect from \S+ (.*)", mta.maillog()[mark:])


async def close_and_count(eg: RelayEgress, mta: Postfix, mark: int) -> list[str]:
    await eg.close()
    deadline = time.monotonic() + 5
    while not (lines := sessions_since(mta, mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


async def test_bdat_is_used_when_the_downstream_offers_chunking(
    egress: RelayEgress, mta: Postfix
) -> None:
    mark = len(mta.maillog())
    subject = unique()
    body = b".\r\n.. two dots\r\nplain\r\n"
    codes, final = await relay(
        egress, transaction(rcpts=["x@local.test"]), message(body, headers(subject))
    )
    assert codes == [250, 250] and final == 250
    (copy,) = delivered(mta, subject)
    # Maildir stores LF line ends; the dot lines arrive untouched (BDAT sends no stuffing).
    assert copy.data.endswith(b"\n\n.\n.. two dots\nplain\n")
    lines = await close_and_count(egress, mta, mark)
    assert len(lines) == 1
    assert "bdat=1" in lines[0] and "data=" not in lines[0]


async def test_large_message_goes_in_several_bdat_chunks(mta: Postfix) -> None:
    mark = len(mta.maillog())
    eg = RelayEgress(settings_for(mta.host, mta.port, chunk_size=4096))
    subject = unique()
    body = b"".join(b"line %05d .\r\n.dot\r\n" % i for i in range(1000))
    msg = message(body, headers(subject))
    _, final = await relay(eg, transaction(rcpts=["x@local.test"]), msg)
    assert final == 250
    (copy,) = delivered(mta, subject)
    assert copy.data.endswith(b"\n\n" + body.replace(b"\r\n", b"\n"))
    (line,) = await close_and_count(eg, mta, mark)
    assert f"bdat={-(-msg.size // 4096)} " in line, line


async def test_data_is_used_when_bdat_is_off_and_bare_lf_dot_is_stuffed(mta: Postfix) -> None:
    # Postfix 3.7 takes a bare LF as a line end; an unstuffed "\n.\r\n" would end the message
    # there and run what follows as commands (SMTP smuggling).
    mark = len(mta.maillog())
    eg = RelayEgress(settings_for(mta.host, mta.port, use_bdat=False))
    subject = unique()
    body = b"one\n.\r\nMAIL FROM:<evil@example.com>\r\n.dot\r\n"
    _codes, final = await relay(
        eg, transaction(rcpts=["x@local.test"]), message(body, headers(subject))
    )
    assert final == 250
    (copy,) = delivered(mta, subject)
    assert copy.data.endswith(b"\n\none\n.\nMAIL FROM:<evil@example.com>\n.dot\n")
    (line,) = await close_and_count(eg, mta, mark)
    assert "data=1" in line and "mail=1" in line and "bdat" not in line


async def test_downstream_rcpt_refusal_reaches_the_client(egress: RelayEgress) -> None:
    tx = transaction(rcpts=["reject-me@local.test"])
    reply, dtx = await egress.begin(session(), tx)
    assert reply.code == 250 and dtx is not None
    r = await dtx.rcpt(tx.recipients[0])
    assert (r.code, r.status) == (550, "5.1.1")
    assert "Recipient rejected by test rule" in r.text
    await dtx.abort()


async def test_envelope_is_replayed_after_a_recipient_is_removed(
    egress: RelayEgress, mta: Postfix
) -> None:
    subject = unique()
    tx = transaction(rcpts=["keep@local.test", "drop@local.test"])
    _reply, dtx = await egress.begin(session(), tx)
    assert dtx is not None
    for r in tx.recipients:
        assert (await dtx.rcpt(r)).code == 250
    tx.message = message(headers=headers(subject))
    tx.delete_recipient("drop@local.test")
    final = await dtx.deliver(session(), tx)
    assert final.code == 250
    time.sleep(0.3)
    copies = delivered(mta, subject)
    assert [c.delivered_to for c in copies] == ["keep@local.test"]


async def test_envelope_is_replayed_after_the_sender_changes(
    egress: RelayEgress, mta: Postfix
) -> None:
    subject = unique()
    tx = transaction(rcpts=["x@local.test"])
    _reply, dtx = await egress.begin(session(), tx)
    assert dtx is not None
    await dtx.rcpt(tx.recipients[0])
    tx.message = message(headers=headers(subject))
    tx.change_sender("bounces@example.org")
    final = await dtx.deliver(session(), tx)
    assert final.code == 250
    (copy,) = delivered(mta, subject)
    assert copy.message["Return-Path"] == "<bounces@example.org>"


async def test_added_recipient_gets_its_rcpt(egress: RelayEgress, mta: Postfix) -> None:
    subject = unique()
    tx = transaction(rcpts=["x@local.test"])
    tx.message = message(headers=headers(subject))
    tx.add_recipient("added@local.test")
    # relay() offers only the recipients already in the list at RCPT time; the added one is
    # new to the downstream at the end of data.
    _reply, dtx = await egress.begin(session(), tx)
    assert dtx is not None
    await dtx.rcpt(tx.recipients[0])
    final = await dtx.deliver(session(), tx)
    assert final.code == 250
    copies = delivered(mta, subject, count=2)
    assert sorted(c.delivered_to for c in copies) == ["added@local.test", "x@local.test"]


async def test_refused_added_recipient_tempfails_and_nothing_is_delivered(
    egress: RelayEgress, mta: Postfix
) -> None:
    mark = len(mta.maillog())
    subject = unique()
    tx = transaction(rcpts=["x@local.test"])
    _reply, dtx = await egress.begin(session(), tx)
    assert dtx is not None
    await dtx.rcpt(tx.recipients[0])
    tx.message = message(headers=headers(subject))
    tx.add_recipient("reject-added@local.test")
    final = await dtx.deliver(session(), tx)
    assert (final.code, final.status) == (451, "4.3.0")
    # The connection was reset cleanly and is kept; the message itself never went out.
    assert egress.pool.idle == 1
    (line,) = await close_and_count(egress, mta, mark)
    assert "rcpt=1/2 rset=1" in line and "bdat" not in line and "data" not in line, line
    assert delivered(mta, subject, timeout=0.3) == []


async def test_removing_every_recipient_sends_nothing(egress: RelayEgress, mta: Postfix) -> None:
    mark = len(mta.maillog())
    subject = unique()
    tx = transaction(rcpts=["x@local.test"])
    _reply, dtx = await egress.begin(session(), tx)
    assert dtx is not None
    await dtx.rcpt(tx.recipients[0])
    tx.message = message(headers=headers(subject))
    tx.delete_recipient("x@local.test")
    final = await dtx.deliver(session(), tx)
    assert final.code == 250 and "discarded" in final.text
    (line,) = await close_and_count(egress, mta, mark)
    assert "rset=1" in line and "bdat" not in line and "data" not in line, line
    assert delivered(mta, subject, timeout=0.3) == []


async def test_connection_is_reused_across_messages(egress: RelayEgress, mta: Postfix) -> None:
    egress.settings.xclient = False  # with XCLIENT a connection serves one session only
    mark = len(mta.maillog())
    for _ in range(5):
        _, final = await relay(
            egress, transaction(rcpts=["x@local.test"]), message(headers=headers(unique()))
        )
        assert final == 250
    assert egress.pool.opened == 1
    (line,) = await close_and_count(egress, mta, mark)
    assert "mail=5" in line and "bdat=5" in line


async def test_with_xclient_a_connection_serves_one_client_and_its_next_sessions(
    egress: RelayEgress, mta: Postfix
) -> None:
    mark = len(mta.maillog())
    first, again = session(), session()  # the same client, HELO and login: one identity
    other = Session("127.0.0.2", 40001, helo="other.test")
    for sess in (first, first, other, again):
        _, final = await relay(
            egress, transaction(rcpts=["x@local.test"]), message(headers=headers(unique())), sess
        )
        assert final == 250
    assert egress.pool.opened == 2
    await egress.end_session(first)
    assert egress.pool.idle == 2
    await egress.close()
    deadline = time.monotonic() + 5
    while len(lines := sessions_since(mta, mark)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(re.search(r"mail=(\d+)", line).group(1) for line in lines) == ["1", "3"]  # type: ignore[union-attr]
    # Postfix counts XCLIENT as "0/1" (its success counter restarts with the new client).
    assert all(" xclient=" in line and "ehlo=2" in line for line in lines), lines
