"""Modifications become milter actions only where the MTA granted the action they need."""

from mailgate import modifications as m
from mailgate.milter import codec as c
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import Action, Step
from mailgate.milter.replies import actions, ungranted


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
