"""One `Negotiated` for both directions: what each flag means for the frames that follow."""

from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import Action, Command, MacroStage, Step


def test_no_flags_send_and_answer_every_step() -> None:
    agreed = Negotiated(6, Action.ADDHDRS, Step(0))
    assert all(agreed.sends(cmd) for cmd in Command)
    assert agreed.replies_to(Command.RCPT) and agreed.replies_to(Command.BODYEOB)
    assert not agreed.leading_space
    assert agreed.withheld == frozenset()


def test_no_and_no_reply_flags_decline_steps_but_never_end_of_message() -> None:
    protocol = Step.NOHDRS | Step.NOBODY | Step.NR_RCPT | Step.HDR_LEADSPC
    agreed = Negotiated(6, Action.NONE, protocol)
    assert not agreed.sends(Command.HEADER) and not agreed.sends(Command.BODY)
    assert agreed.sends(Command.RCPT) and not agreed.replies_to(Command.RCPT)
    assert agreed.replies_to(Command.BODYEOB)
    assert agreed.leading_space
    assert agreed.withheld == {"headers", "body"}


def test_protocol_2_has_no_data_step() -> None:
    assert not Negotiated(2, Action.NONE, Step(0)).sends(Command.DATA)
    assert Negotiated(6, Action.NONE, Step(0)).sends(Command.DATA)


def test_equal_answers_are_equal_and_macro_lists_count() -> None:
    lists = {MacroStage.CONNECT: ("j", "{client_addr}")}
    assert Negotiated(6, Action.ADDHDRS, Step.NR_HDR, lists) == Negotiated(
        6, Action.ADDHDRS, Step.NR_HDR, dict(lists)
    )
    assert Negotiated(6, Action.ADDHDRS, Step.NR_HDR, lists) != Negotiated(
        6, Action.ADDHDRS, Step.NR_HDR
    )
