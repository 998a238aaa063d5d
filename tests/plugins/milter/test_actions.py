"""Every reply and action of protocol 6 and 2, from real pymilter milters, through a gateway."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from mailgate import Address, Verdict, hookimpl
from mailgate.pipeline import EnabledPlugin
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.milter.conftest import ActionMilterFactory, BridgeFactory, milter


def message(subject: str, extra: str = "") -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\n"
        f"X-Drop: goes away\r\n{extra}\r\nhello\r\nworld\r\n"
    ).encode()


def send(port: int, sender: str, rcpts: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, rcpts, data)


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_every_v6_action_reaches_the_relayed_message(
    action_milter_factory: ActionMilterFactory,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
    unix: bool,
) -> None:
    gw = bridge_factory(milter(action_milter_factory("A", 6, unix=unix)))
    send(gw.port, "s@example.com", ["b@example.com", "removed@example.com"], message("hi"))
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.mail_from == "changed@example.com"
    assert sorted(tx.rcpts) == ["added@example.com", "b@example.com", "par@example.com"]
    assert tx.header("X-A-Subject") == "hi"
    assert tx.header("Subject") == "changed by A"
    assert tx.header("X-Drop") is None
    assert tx.header("X-A-Body-Len") == str(len(b"hello\r\nworld\r\n"))
    assert tx.header("X-A-Rcpts") == "<b@example.com>,<removed@example.com>"
    assert tx.data.startswith(b"X-A-Top: inserted\r\n")
    assert b"X-A-Folded: first line\r\n\tsecond line\r\n" in tx.data
    assert tx.data.endswith(b"\r\n\r\nbody replaced by A\r\n")
    mail_macros = tx.header("X-A-Mail")
    assert mail_macros is not None
    queue_id, mail_addr, client_addr, auth = mail_macros.split("|")
    assert queue_id and mail_addr == "s@example.com" and client_addr == "127.0.0.1"
    assert auth == "None"
    assert tx.header("X-A-Connect") is not None


def test_protocol_2_milter_gets_its_actions_applied(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(action_milter_factory("B", 2), version=2))
    send(gw.port, "s@example.com", ["b@example.com", "removed@example.com"], message("v2"))
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.mail_from == "s@example.com"
    assert sorted(tx.rcpts) == ["added@example.com", "b@example.com"]
    assert tx.header("X-B-Subject") == "v2"
    assert tx.header("Subject") == "changed by B"
    assert tx.data.endswith(b"\r\n\r\nbody replaced by B\r\n")


def test_refusals_at_mail_rcpt_and_end_of_data_use_the_milters_replies(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(action_milter_factory()))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("mail-reject@example.com")[0] == 550
        client.rset()
        assert client.mail("mail-tempfail@example.com")[0] == 451
        client.rset()
        assert client.mail("s@example.com")[0] == 250
        code, text = client.rcpt("rcpt-reject@example.com")
        assert (code, text) == (550, b"5.1.1 no such user here")
        assert client.rcpt("b@example.com")[0] == 250
        code, text = client.data(message("reply"))
        assert (code, text) == (554, b"5.7.1 milter says no")
        client.mail("s@example.com")
        client.rcpt("b@example.com")
        code, text = client.data(message("mlreply"))
        assert (code, text) == (554, b"5.7.1 milter says no\n5.7.1 on two lines")
        client.mail("s@example.com")
        client.rcpt("b@example.com")
        assert client.data(message("tempfail"))[0] == 451
        client.mail("s@example.com")
        client.rcpt("b@example.com")
        assert client.data(message("discard"))[0] == 250
        client.mail("s@example.com")
        client.rcpt("b@example.com")
        assert client.data(message("again"))[0] == 250
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.header("X-A-Subject") == "again"


def test_quarantine_action_holds_the_message(
    action_milter_factory: ActionMilterFactory,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    gw = bridge_factory(milter(action_milter_factory()))
    send(gw.port, "s@example.com", ["b@example.com"], message("quarantine"))
    held = list((tmp_path / "quarantine").glob("*.json"))
    assert len(held) == 1
    assert "held by test milter" in held[0].read_text()
    assert smtp_sink.messages() == []


def test_progress_extends_the_end_of_message_timeout(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(action_milter_factory(), eom_timeout=0.8))
    send(gw.port, "s@example.com", ["b@example.com"], message("progress"))
    assert len(smtp_sink.wait_for_messages(1)) == 1


def test_a_chain_of_two_milters_sees_the_message_as_the_first_left_it(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    first, second = action_milter_factory("A"), action_milter_factory("B")
    gw = bridge_factory(milter(first), milter(second))
    send(gw.port, "s@example.com", ["b@example.com"], message("chain"))
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.header("X-A-Subject") == "chain"
    assert tx.header("X-B-Subject") == "changed by A"
    assert tx.header("X-B-Body-Len") == str(len(b"body replaced by A\r\n"))
    assert tx.header("Subject") == "changed by B"
    assert tx.data.endswith(b"body replaced by B\r\n")


def test_one_connection_serves_every_transaction_of_a_session(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(action_milter_factory()))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        for i in range(3):
            client.sendmail("s@example.com", ["b@example.com"], message(f"n{i}"))
    txs = smtp_sink.wait_for_messages(3)
    assert sorted(t.header("X-A-Subject") or "" for t in txs) == ["n0", "n1", "n2"]
    queue_ids = {(t.header("X-A-Mail") or "").split("|")[0] for t in txs}
    assert len(queue_ids) == 3


class RefusesNobody:
    """Refuses ``nobody@...`` at RCPT, before the milter in the chain."""

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        if recipient.local_part == "nobody":
            return Verdict.reject(550, "5.1.1", "No such user here")
        return None


def test_a_milter_that_asks_for_refused_recipients_gets_them(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    """SMFIP_RCPT_REJ: a recipient an earlier plugin refused reaches the milter as RCPT with
    {rcpt_mailer} = error, {rcpt_host} = the status and {rcpt_addr} = the text, as Postfix
    sends it; one the milter itself refused is not sent twice; the others are as usual."""
    gw = bridge_factory(
        EnabledPlugin("refuses_nobody", RefusesNobody()), milter(action_milter_factory("A", 6))
    )
    refused = send(
        gw.port,
        "s@example.com",
        ["nobody@example.com", "b@example.com", "rcpt-reject@example.com"],
        message("hi"),
    )
    assert refused == {
        "nobody@example.com": (550, b"5.1.1 No such user here"),
        "rcpt-reject@example.com": (550, b"5.1.1 no such user here"),
    }
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.header("X-A-Refused") == "<nobody@example.com> 5.1.1 No such user here"
    assert tx.header("X-A-Rcpts") == "<b@example.com>"
