"""Both directions of translation: verdicts and modifications to milter replies and actions
(the listener), and a milter's replies and actions back (the bridge)."""

import io

import pytest

from mailgate import Address, Message, Transaction, Verdict, VerdictKind
from mailgate import modifications as m
from mailgate.message import Header
from mailgate.milter import codec as c
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import ALL_ACTIONS, Action, Command, Step
from mailgate.milter.translate import (
    ACTION_NEEDS,
    actions,
    apply_actions,
    milter_verdict,
    ungranted,
    verdict_reply,
)
from mailgate.plugins.milter.client import EOM_ACTIONS


def test_insert_header_needs_addhdrs_not_chghdrs() -> None:
    agreed = Negotiated(6, Action.ADDHDRS, Step(0))
    sent = list(actions([m.InsertHeader(0, "X-Top", "v")], None, agreed))
    assert [type(a) for a in sent] == [c.InsertHeader]


def test_modifications_the_mta_did_not_grant_are_named() -> None:
    agreed = Negotiated(6, Action.ADDHDRS, Step(0))
    mods: list[m.Modification] = [
        m.AddHeader("X-A", "1"),
        m.ChangeHeader("Subject", 1, "x"),
        m.DeleteRecipient("b@example.org"),
    ]
    assert ungranted(mods, agreed) == ["ChangeHeader", "DeleteRecipient"]
    assert ungranted(mods[:1], agreed) == []


def transaction() -> Transaction:
    tx = Transaction(Address("a@example.org"))
    tx.message = Message([Header.new("Subject", "hi")], io.BytesIO(b"body\r\n"))
    return tx


def test_bridge_reads_back_what_the_listener_sends() -> None:
    agreed = Negotiated(6, ALL_ACTIONS, Step(0))
    mods: list[m.Modification] = [
        m.AddHeader("X-A", "one\r\n\tfolded"),
        m.InsertHeader(0, "X-Top", "v"),
        m.ChangeHeader("Subject", 2, "new"),
        m.DeleteHeader("X-Old", 1),
        m.AddRecipient("c@example.org", ("NOTIFY=NEVER",)),
        m.AddRecipient("d@example.org"),
        m.DeleteRecipient("b@example.org"),
        m.ChangeSender("s@example.org", ("SIZE=10",)),
        m.Quarantine("held"),
    ]
    tx = transaction()
    apply_actions(actions(mods, None, agreed), tx, "test")
    assert tx.modifications == mods


def test_replaced_body_chunks_become_one_new_body() -> None:
    tx = transaction()
    apply_actions([c.ReplaceBody(b"new "), c.ReplaceBody(b"body\r\n")], tx, "test")
    assert [type(mod) for mod in tx.modifications] == [m.ReplaceBody]
    assert tx.message is not None and b"".join(tx.message.iter_body()) == b"new body\r\n"


def test_empty_quarantine_reason_names_the_milter() -> None:
    tx = Transaction(Address("a@example.org"))
    apply_actions([c.Quarantine(b"")], tx, "opendkim")
    assert tx.quarantined == "milter opendkim"


@pytest.mark.parametrize(
    ("verdict", "end_of_message", "reply"),
    [
        (None, False, c.Continue()),
        (Verdict.accept(), False, c.Continue()),
        (Verdict.accept(), True, c.Accept()),
        (Verdict.discard(), False, c.Discard()),
        (Verdict.quarantine(reason="x"), True, c.Continue()),
        (Verdict.reject(550, "5.7.1", "no"), True, c.ReplyCode(b"550 5.7.1 no")),
    ],
)
def test_verdicts_become_replies(
    verdict: Verdict | None, end_of_message: bool, reply: c.MilterReply
) -> None:
    assert verdict_reply(verdict, end_of_message=end_of_message) == reply


@pytest.mark.parametrize(
    ("reply", "command", "end_of_message", "expected"),
    [
        (c.Continue(), Command.RCPT, False, None),
        (c.Accept(), Command.BODYEOB, True, None),
        (c.Discard(), Command.MAIL, False, None),
        (c.Discard(), Command.BODYEOB, True, VerdictKind.DISCARD),
        (c.Shutdown(), Command.HELO, False, VerdictKind.DISCONNECT),
        (c.ConnFail(), Command.RCPT, False, VerdictKind.DISCONNECT),
        (c.Tempfail(), Command.RCPT, False, VerdictKind.TEMPFAIL),
        (c.ReplyCode(b"250 fine"), Command.RCPT, False, VerdictKind.TEMPFAIL),
        (c.ReplyCode(b"421 4.3.2 bye"), Command.MAIL, False, VerdictKind.DISCONNECT),
    ],
)
def test_milter_replies_become_verdicts(
    reply: c.Frame, command: Command, end_of_message: bool, expected: VerdictKind | None
) -> None:
    verdict = milter_verdict(reply, command, "m", end_of_message=end_of_message)
    assert (verdict.kind if verdict else None) is expected


def test_reject_is_554_at_connect_and_550_after() -> None:
    at_connect = milter_verdict(c.Reject(), Command.CONNECT, "m", end_of_message=False)
    at_rcpt = milter_verdict(c.Reject(), Command.RCPT, "m", end_of_message=False)
    assert at_connect is not None and at_connect.code == 554
    assert at_rcpt is not None and at_rcpt.code == 550


def test_replycode_keeps_the_milters_own_reply() -> None:
    verdict = milter_verdict(c.ReplyCode(b"550 5.7.1 Go away"), None, "m", end_of_message=True)
    assert verdict == Verdict.reject(550, "5.7.1", "Go away")


def test_every_action_frame_needs_an_action_flag() -> None:
    assert set(ACTION_NEEDS) == set(EOM_ACTIONS)
