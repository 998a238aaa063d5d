"""The UNKNOWN step: unknown SMTP commands reach the milters that ask for them (pymilter's
``unknown`` callback), and their answer is the reply to that command."""

from __future__ import annotations

import smtplib

from tests.peers.smtp_sink import SmtpSink
from tests.plugins.milter.conftest import ActionMilterFactory, BridgeFactory, milter, milter_list

MESSAGE = b"From: a@example.com\r\nSubject: after\r\n\r\nhello\r\n"


def test_a_milter_that_asks_for_unknown_commands_answers_them(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(action_milter_factory("A")))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.docmd("XREJECT this please") == (550, b"5.5.1 A refuses XREJECT this please")
        assert client.docmd("XOTHER") == (500, b"5.5.1 Command not recognized")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        client.mail("a@example.com")
        # In a transaction too; the transaction goes on.
        assert client.docmd("XREJECT mid") == (550, b"5.5.1 A refuses XREJECT mid")
        assert client.rcpt("c@example.com")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    assert len(smtp_sink.wait_for_messages(2)) == 2


def test_a_milter_that_declines_unknown_commands_is_not_sent_them(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory
) -> None:
    """SMFIP_NOUNKNOWN: the same milter code, but it negotiated NOUNKNOWN; were the command
    sent, its callback would refuse it."""
    declines = milter(action_milter_factory("B-nounknown"))
    gw = bridge_factory(declines)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.docmd("XREJECT x") == (500, b"5.5.1 Command not recognized")


def test_in_a_list_the_milter_that_asks_answers(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory
) -> None:
    declines, asks = action_milter_factory("B-nounknown"), action_milter_factory("C")
    gw = bridge_factory(milter_list({"address": declines}, {"address": asks}))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.docmd("XREJECT y") == (550, b"5.5.1 C refuses XREJECT y")
