"""Failure policies: an unreachable, hung, dying or nonsensical milter never breaks the session."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate import Address, Message, Session, Transaction, Verdict, VerdictKind
from mailgate.message import Header
from mailgate.milter import codec as c
from mailgate.milter.protocol import Step
from mailgate.plugins.milter import MilterPlugin, MilterSettings, reply_verdict
from mailgate.plugins.milter.bridged import _Link
from mailgate.plugins.milter.client import offer
from tests.peers.ports import free_port
from tests.plugins.milter.fake_milter import CLOSE, HANG, FakeMilter, Script, plain


def plugin(address: str, **settings: object) -> MilterPlugin:
    defaults: dict[str, object] = {"command_timeout": 0.3, "eom_timeout": 0.3}
    return MilterPlugin(MilterSettings(address=address, **(defaults | settings)))  # type: ignore[arg-type]


def transaction(subject: str = "hi") -> Transaction:
    tx = Transaction(Address("a@example.com"), [Address("b@example.com")])
    tx.message = Message([Header.new("Subject", subject)], io.BytesIO(b"body\r\n"))
    return tx


async def whole_session(p: MilterPlugin, session: Session, tx: Transaction) -> list[object]:
    """Every stage in order; the answers, as the pipeline would get them."""
    answers: list[object] = [await p.on_connect(session), await p.on_helo(session, "c.test")]
    session.helo = "c.test"
    answers.append(await p.on_mail(session, tx))
    answers.append(await p.on_rcpt(session, tx, Address("c@example.com")))
    answers.append(await p.on_data(session, tx))
    answers.append(await p.on_message(session, tx))
    return answers


@pytest.fixture
async def fake() -> AsyncIterator[FakeMilter]:
    milter = await FakeMilter().start()
    yield milter
    await milter.stop()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("tempfail", VerdictKind.TEMPFAIL), ("reject", VerdictKind.REJECT)],
)
async def test_unreachable_milter_refuses_by_policy(policy: str, expected: VerdictKind) -> None:
    p = plugin(f"inet:127.0.0.1:{free_port()}", on_failure=policy)
    verdict = await p.on_connect(Session("192.0.2.1"))
    assert isinstance(verdict, Verdict) and verdict.kind is expected


async def test_accept_policy_goes_on_without_the_milter_for_the_session() -> None:
    p = plugin(f"inet:127.0.0.1:{free_port()}", on_failure="accept")
    session, tx = Session("192.0.2.1"), transaction()
    assert await whole_session(p, session, tx) == [None] * 6
    assert session.counters["milter_failures"] == 1


async def test_skip_policy_tries_again_at_the_next_message(fake: FakeMilter) -> None:
    broken: Script = lambda f: HANG if isinstance(f, c.EndOfMessage) else plain(f)  # noqa: E731
    fake.script = broken
    p = plugin(fake.address, on_failure="skip")
    session, tx = Session("192.0.2.1"), transaction()
    assert await whole_session(p, session, tx) == [None] * 6
    assert tx.results[p.name].result == "error"
    fake.script = plain
    second = transaction()
    assert await p.on_mail(session, second) is None
    assert await p.on_message(session, second) is None
    assert second.results[p.name].result == "continue"


async def test_hung_milter_times_out_per_command(fake: FakeMilter) -> None:
    fake.script = lambda f: HANG if isinstance(f, c.Helo) else plain(f)
    p = plugin(fake.address, command_timeout=0.2)
    session = Session("192.0.2.1")
    assert await p.on_connect(session) is None
    started = time.monotonic()
    verdict = await p.on_helo(session, "c.test")
    assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL
    assert "no reply within 0.2s" in verdict.reason
    assert time.monotonic() - started < 1.0


async def test_a_dead_connection_is_reopened_once(fake: FakeMilter) -> None:
    p = plugin(fake.address)
    session = Session("192.0.2.1")
    first = transaction()
    assert await whole_session(p, session, first) == [None] * 6
    fake.script = lambda f: CLOSE if isinstance(f, c.Mail) else plain(f)
    verdict = await p.on_mail(session, transaction())
    assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL
    assert fake.connections == 2
    fake.script = plain
    verdict = await p.on_mail(session, transaction())
    assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL, "only once a session"


async def test_reopened_connection_replays_connect_and_helo(fake: FakeMilter) -> None:
    p = plugin(fake.address)
    session = Session("192.0.2.1")
    await whole_session(p, session, transaction())
    link = session.notes[f"milter:{p.name}"]
    assert isinstance(link, _Link)
    link.client._writer.close()  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    assert await p.on_mail(session, transaction()) is None
    assert fake.connections == 2
    kinds = [type(f).__name__ for f in fake.frames if not isinstance(f, c.Macro)]
    assert kinds[-5:] == ["OptNeg", "Connect", "Helo", "Mail", "Rcpt"]


async def test_an_oversized_frame_applies_the_policy(fake: FakeMilter) -> None:
    fake.script = lambda f: (b"\x7f\xff\xff\xff" + b"h") if isinstance(f, c.Connect) else plain(f)
    verdict = await plugin(fake.address).on_connect(Session("192.0.2.1"))
    assert verdict is not None and "exceeds the limit" in verdict.reason


async def test_an_action_before_end_of_message_applies_the_policy(fake: FakeMilter) -> None:
    fake.script = lambda f: (
        c.encode(c.AddHeader(b"X", b"y")) if isinstance(f, c.Connect) else plain(f)
    )
    verdict = await plugin(fake.address, on_failure="reject").on_connect(Session("192.0.2.1"))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert "unexpected AddHeader" in verdict.reason


async def test_actions_not_negotiated_are_refused(fake: FakeMilter) -> None:
    def script(frame: c.Frame) -> bytes | None:
        if isinstance(frame, c.OptNeg):
            return c.encode(c.OptNegReply(6, 0x01, 0))
        if isinstance(frame, c.EndOfMessage):
            return c.encode(c.DelRcpt(b"<b@example.com>")) + c.encode(c.Accept())
        return plain(frame)

    fake.script = script
    answers = await whole_session(plugin(fake.address), Session("192.0.2.1"), transaction())
    assert isinstance(answers[-1], Verdict) and "DelRcpt without negotiating" in answers[-1].reason


async def test_tcp_nodelay_is_set(fake: FakeMilter) -> None:
    p = plugin(fake.address)
    session = Session("192.0.2.1")
    await p.on_connect(session)
    link = session.notes[f"milter:{p.name}"]
    sock = link.client._writer.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_shutdown_and_connfail_disconnect_the_client(fake: FakeMilter) -> None:
    fake.script = lambda f: c.encode(c.Shutdown()) if isinstance(f, c.Helo) else plain(f)
    p = plugin(fake.address)
    session = Session("192.0.2.1")
    await p.on_connect(session)
    verdict = await p.on_helo(session, "x")
    assert verdict is not None and verdict.kind is VerdictKind.DISCONNECT


def test_replycode_is_passed_through_verbatim() -> None:
    assert reply_verdict("550 5.7.1 Go away") == Verdict.reject(550, "5.7.1", "Go away")
    assert reply_verdict("451 try later") == Verdict.tempfail(451, "", "try later")
    verdict = reply_verdict("550-5.7.1 line one\r\n550 5.7.1 line two")
    assert verdict is not None and verdict.text == "line one\nline two"
    assert verdict.smtp_reply() == "550-5.7.1 line one\r\n550 5.7.1 line two"
    assert reply_verdict("250 fine") is None
    assert reply_verdict("garbage") is None


HOOK_OF_STAGE = {"optneg": 0, "connect": 0, "mail": 2, "eom": 5}
"""Where a reply at each stage lands in `whole_session`'s answers (OPTNEG goes with connect)."""


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    stage=st.sampled_from(["optneg", "connect", "mail", "eom"]),
    reply=st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda code, data, cut: (len(data) + 1).to_bytes(4, "big") + code + data[:cut],
            st.sampled_from([bytes([b]) for b in b"O+-24abcdefhilmpqrsty?"]),
            st.binary(max_size=40),
            st.integers(0, 40),
        ),
    ),
)
def test_random_and_truncated_replies_never_crash_the_client(stage: str, reply: bytes) -> None:
    when = {"optneg": c.OptNeg, "connect": c.Connect, "mail": c.Mail, "eom": c.EndOfMessage}

    def script(frame: c.Frame) -> bytes | None:
        return reply if isinstance(frame, when[stage]) else plain(frame)

    async def run() -> list[object]:
        milter = await FakeMilter(script).start()
        try:
            p = plugin(milter.address, command_timeout=0.05, eom_timeout=0.05, connect_timeout=0.2)
            return await whole_session(p, Session("192.0.2.1"), transaction())
        finally:
            await milter.stop()

    answers = asyncio.run(run())
    failing = HOOK_OF_STAGE[stage]
    assert answers[:failing] == [None] * failing, "the milter said continue until then"
    declared = int.from_bytes(reply[:4], "big")
    if len(reply) < 4 or len(reply) - 4 < max(declared, 1):
        # No whole reply frame: the command times out, and on_failure says tempfail.
        answer = answers[failing]
        assert isinstance(answer, Verdict) and answer.kind is VerdictKind.TEMPFAIL, answer


async def test_later_connections_send_optneg_with_the_first_commands(fake: FakeMilter) -> None:
    p = plugin(fake.address)
    for _ in range(2):
        session = Session("192.0.2.1")
        assert await p.on_connect(session) is None
        await p.on_disconnect(session)
    await asyncio.sleep(0.05)  # the last QUIT is on its way
    kinds = [type(f).__name__ for f in fake.frames]
    assert kinds == ["OptNeg", "Macro", "Connect", "Quit"] * 2
    assert fake.connections == 2


async def test_a_changed_negotiation_is_redone_on_a_new_connection(fake: FakeMilter) -> None:
    p = plugin(fake.address)
    session = Session("192.0.2.1")
    await whole_session(p, session, transaction())
    await p.on_disconnect(session)

    def no_connect(frame: c.Frame) -> bytes | None:
        if isinstance(frame, c.OptNeg):
            return c.encode(c.OptNegReply(6, 0x01, int(Step.NOCONNECT)))
        return plain(frame)

    fake.script = no_connect
    await asyncio.sleep(0.05)  # the first session's QUIT is on its way
    fake.frames.clear()
    tx = transaction()
    answers = await whole_session(p, Session("192.0.2.1"), tx)
    assert answers == [None] * 6
    assert fake.connections == 3
    retry = fake.frames.index(offer(6), 1)
    assert isinstance(fake.frames[retry - 1], c.Connect)  # built for the old answer
    after_retry = [type(f).__name__ for f in fake.frames[retry:]]
    assert "Connect" not in after_retry
    assert tx.results[p.name].result == "continue"
