"""Modifications become milter actions only where the MTA granted the action they need."""

from mailgate import modifications as m
from mailgate.milter import codec as c
from mailgate.milter.negotiation import Negotiated
from mailgate.milter.protocol import Action, Step
from mailgate.milter.replies import actions


def test_insert_header_needs_addhdrs_not_chghdrs() -> None:
    agreed = Negotiated(6, Action.ADDHDRS, Step(0))
    sent = list(actions([m.InsertHeader(0, "X-Top", "v")], None, agreed))
    assert [type(a) for a in sent] == [c.InsertHeader]


def test_change_header_is_left_out_without_chghdrs() -> None:
    agreed = Negotiated(6, Action.ADDHDRS, Step(0))
    assert list(actions([m.ChangeHeader("Subject", 1, "x")], None, agreed)) == []
