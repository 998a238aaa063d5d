"""Refused recipients for a milter whose ``stages`` leave out ``rcpt``: kept, and sent with its
next stage (in the order they came), when the milter asked for them (SMFIP_RCPT_REJ)."""

from __future__ import annotations

import io
import smtplib
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate import Address, Message, Session, Transaction, Verdict
from mailgate.message import Header
from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS, Step
from mailgate.pipeline import EnabledPlugin
from mailgate.plugins.milter import MilterPlugin, MilterSettings
from mailgate.plugins.milter.bridged import MAX_REFUSED_KEPT, _Refused, interleave
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.milter.conftest import ActionMilterFactory, BridgeFactory, milter
from tests.plugins.milter.fake_milter import FakeMilter, plain
from tests.plugins.milter.test_actions import RefusesNobody, message

REFUSED = Verdict.reject(550, "5.1.1", "No such user here")


@pytest.mark.parametrize("stages", [["message"], ["connect", "mail", "data", "message"]])
def test_a_real_milter_without_the_rcpt_stage_still_hears_of_refused_recipients(
    action_milter_factory: ActionMilterFactory,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
    stages: list[str],
) -> None:
    gw = bridge_factory(
        EnabledPlugin("refuses_nobody", RefusesNobody()),
        milter(action_milter_factory("A"), stages=stages),
    )
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        refused = client.sendmail(
            "s@example.com",
            ["b@example.com", "nobody@example.com", "c@example.com", "nobody@example.org"],
            message("hi"),
        )
    assert set(refused) == {"nobody@example.com", "nobody@example.org"}
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.header("X-A-Refused") == (
        "<nobody@example.com> 5.1.1 No such user here,<nobody@example.org> 5.1.1 No such user here"
    )
    assert (tx.header("X-A-Rcpts") or "").split(",")[:2] == ["<b@example.com>", "<c@example.com>"]


def test_a_milter_that_did_not_ask_is_not_sent_them(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    """A protocol 2 milter cannot ask (RCPT_REJ is a v6 flag)."""
    gw = bridge_factory(
        EnabledPlugin("refuses_nobody", RefusesNobody()),
        milter(action_milter_factory("A", version=2), version=2, stages=["message"]),
    )
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.sendmail("s@example.com", ["b@example.com", "nobody@example.com"], message("hi"))
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.header("X-A-Refused") is None
    assert (tx.header("X-A-Rcpts") or "").split(",")[0] == "<b@example.com>"


@pytest.fixture
async def fake() -> AsyncIterator[FakeMilter]:
    milter = await FakeMilter().start()
    yield milter
    await milter.stop()


def refusing_refused_ones() -> tuple[list[str], object]:
    """A milter that asks for refused recipients and REJECTs each of them (which must not
    count), CONTINUE to the rest."""
    marked = {"error": False}

    def script(frame: c.Frame) -> bytes | None:
        if isinstance(frame, c.OptNeg):
            return c.encode(c.OptNegReply(6, int(ALL_ACTIONS), int(Step.RCPT_REJ)))
        if isinstance(frame, c.Macro) and frame.stage == b"R":
            marked["error"] = (b"{rcpt_mailer}", b"error") in frame.macros
        if isinstance(frame, c.Rcpt) and marked["error"]:
            return c.encode(c.Reject())
        return plain(frame)

    return [], script


async def run_message(p: MilterPlugin) -> tuple[Transaction, Verdict | None]:
    """RCPTs b, x, c, y: b and c join, x and y are refused."""
    session = Session("192.0.2.1")
    tx = Transaction(Address("s@example.com"))
    assert await p.on_connect(session) is None
    assert await p.on_mail(session, tx) is None
    for name in "bxcy":
        rcpt = Address(f"{name}@example.com")
        assert await p.on_rcpt(session, tx, rcpt) is None
        if name in "xy":
            await p.on_rcpt_refused(session, tx, rcpt, REFUSED)
        else:
            tx.recipients.append(rcpt)
    assert await p.on_data(session, tx) is None
    tx.message = Message([Header.new("Subject", "hi")], io.BytesIO(b"body\r\n"))
    verdict = await p.on_message(session, tx)
    await p.on_disconnect(session)
    return tx, verdict


async def test_their_answers_do_not_count_and_order_is_kept(fake: FakeMilter) -> None:
    _, fake.script = refusing_refused_ones()  # type: ignore[assignment]
    p = MilterPlugin(MilterSettings(address=fake.address, stages=["message"]))
    tx, verdict = await run_message(p)
    assert verdict is None  # the milter's REJECTs to x and y did not count
    rcpts = [f.recipient for f in fake.frames if isinstance(f, c.Rcpt)]
    assert rcpts == [b"<b@example.com>", b"<x@example.com>", b"<c@example.com>", b"<y@example.com>"]
    assert tx.results[p.name].result == "continue"


async def test_the_accepted_ones_are_not_marked_refused(fake: FakeMilter) -> None:
    _, fake.script = refusing_refused_ones()  # type: ignore[assignment]
    p = MilterPlugin(MilterSettings(address=fake.address, stages=["data", "message"]))
    await run_message(p)
    marks = [
        dict(f.macros).get(b"{rcpt_mailer}")
        for f in fake.frames
        if isinstance(f, c.Macro) and f.stage == b"R"
    ]
    assert marks == [None, b"error", None, b"error"]


async def test_how_many_are_kept_is_bounded(fake: FakeMilter) -> None:
    _, fake.script = refusing_refused_ones()  # type: ignore[assignment]
    p = MilterPlugin(MilterSettings(address=fake.address, stages=["message"]))
    session = Session("192.0.2.1")
    tx = Transaction(Address("s@example.com"))
    assert await p.on_connect(session) is None
    for i in range(MAX_REFUSED_KEPT + 50):
        await p.on_rcpt_refused(session, tx, Address(f"r{i}@example.com"), REFUSED)
    tx.recipients.append(Address("b@example.com"))
    tx.message = Message([Header.new("Subject", "hi")], io.BytesIO(b"body\r\n"))
    assert await p.on_message(session, tx) is None
    assert len([f for f in fake.frames if isinstance(f, c.Rcpt)]) == MAX_REFUSED_KEPT + 1


@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), max_size=30),
)
def test_interleave_keeps_the_clients_order(arrivals: list[tuple[bool, bool]]) -> None:
    """Each RCPT in arrival order is refused or joins (and may have been sent already): what
    goes out is the unsent joined ones and every kept refused one, in arrival order."""
    recipients: list[Address] = []
    sent: set[tuple[str, tuple[str, ...]]] = set()
    kept: list[_Refused] = []
    expected: list[tuple[str, bool]] = []
    for i, (joins, already_sent) in enumerate(arrivals):
        rcpt = Address(f"r{i}@example.com")
        if joins:
            recipients.append(rcpt)
            if already_sent:
                sent.add((rcpt.address, ()))
            else:
                expected.append((rcpt.address, False))
        else:
            kept.append(_Refused(len(recipients), rcpt, REFUSED))
            expected.append((rcpt.address, True))
    out = interleave(recipients, sent, kept)
    assert [(a.address, v is not None) for a, v in out] == expected


async def test_refused_before_the_milter_heard_of_the_transaction_go_with_it(
    fake: FakeMilter,
) -> None:
    """``rcpt`` listed, but the first RCPTs were refused before the milter was asked anything
    in this transaction (``mail`` not listed): they go out with the first RCPT it is asked."""
    _, fake.script = refusing_refused_ones()  # type: ignore[assignment]
    p = MilterPlugin(MilterSettings(address=fake.address, stages=["rcpt", "message"]))
    session = Session("192.0.2.1")
    tx = Transaction(Address("s@example.com"))
    assert await p.on_connect(session) is None
    assert await p.on_mail(session, tx) is None
    await p.on_rcpt_refused(session, tx, Address("x@example.com"), REFUSED)
    assert await p.on_rcpt(session, tx, Address("b@example.com")) is None
    rcpts = [f.recipient for f in fake.frames if isinstance(f, c.Rcpt)]
    assert rcpts == [b"<x@example.com>", b"<b@example.com>"]
