"""The bridge tells a milter of each recipient once, whichever Address object carries it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest

from mailgate import Address, Message, Session, Transaction, Verdict
from mailgate.message import Header
from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS, Step
from mailgate.plugins.milter import MilterPlugin, MilterSettings
from tests.plugins.milter.fake_milter import FakeMilter, plain


@pytest.fixture
async def fake() -> AsyncIterator[FakeMilter]:
    milter = await FakeMilter().start()
    yield milter
    await milter.stop()


async def open_transaction(p: MilterPlugin) -> tuple[Session, Transaction]:
    session = Session("192.0.2.1")
    tx = Transaction(Address("a@example.com"))
    tx.message = Message([Header.new("Subject", "hi")], io.BytesIO(b"body\r\n"))
    assert await p.on_connect(session) is None
    assert await p.on_mail(session, tx) is None
    return session, tx


def rcpts(fake: FakeMilter) -> list[c.Frame]:
    return [f for f in fake.frames if isinstance(f, c.Rcpt)]


async def test_an_equal_copy_of_a_sent_recipient_is_not_sent_again(fake: FakeMilter) -> None:
    p = MilterPlugin(MilterSettings(address=fake.address))
    session, tx = await open_transaction(p)
    given = Address("b@example.com", ["NOTIFY=NEVER"])
    assert await p.on_rcpt(session, tx, given) is None
    # The transaction holds an equal Address, not the object on_rcpt was given (both alive, so
    # their ids differ).
    tx.recipients.append(Address("b@example.com", ["NOTIFY=NEVER"]))
    assert tx.recipients[0] is not given
    assert await p.on_data(session, tx) is None
    assert await p.on_message(session, tx) is None
    assert rcpts(fake) == [c.Rcpt(b"<b@example.com>", (b"NOTIFY=NEVER",))]


async def test_same_address_with_other_parameters_is_another_recipient(fake: FakeMilter) -> None:
    p = MilterPlugin(MilterSettings(address=fake.address, stages=["connect", "mail", "message"]))
    session, tx = await open_transaction(p)
    tx.recipients += [Address("b@example.com"), Address("b@example.com", ["NOTIFY=NEVER"])]
    assert await p.on_message(session, tx) is None
    assert rcpts(fake) == [
        c.Rcpt(b"<b@example.com>"),
        c.Rcpt(b"<b@example.com>", (b"NOTIFY=NEVER",)),
    ]


async def test_a_refused_copy_of_a_sent_recipient_is_not_sent_again(fake: FakeMilter) -> None:
    def wants_refused(frame: c.Frame) -> bytes | None:
        if isinstance(frame, c.OptNeg):
            return c.encode(c.OptNegReply(6, int(ALL_ACTIONS), int(Step.RCPT_REJ)))
        return plain(frame)

    fake.script = wants_refused
    p = MilterPlugin(MilterSettings(address=fake.address))
    session, tx = await open_transaction(p)
    assert await p.on_rcpt(session, tx, Address("b@example.com")) is None
    refused = Verdict.reject(550, "5.1.1", "no such user")
    await p.on_rcpt_refused(session, tx, Address("b@example.com"), refused)
    await p.on_rcpt_refused(session, tx, Address("c@example.com"), refused)
    assert rcpts(fake) == [c.Rcpt(b"<b@example.com>"), c.Rcpt(b"<c@example.com>")]
