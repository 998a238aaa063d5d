"""`on_outcome` is called once for every transaction, also when it ends without a final reply."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from mailgate.plugin import hookimpl
from mailgate.session import Address, Transaction
from mailgate.verdict import Verdict, VerdictKind
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import RecordingEgress, wait_until

MESSAGE = b"From: a@example.com\r\nSubject: outcome\r\n\r\nHello\r\n"


class Outcomes:
    """Records every outcome: (sender, kind, reason)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.disconnected = False

    @hookimpl
    def on_outcome(self, transaction: Transaction, verdict: Verdict) -> None:
        self.seen.append((transaction.sender.address, verdict.kind.value, verdict.reason))

    @hookimpl
    def on_disconnect(self) -> None:
        self.disconnected = True


class Crashes:
    """A buggy plugin: answers a recipient with something that is not a verdict."""

    @hookimpl
    def on_rcpt(self, recipient: Address) -> object:
        return "not a verdict" if recipient.address.startswith("crash") else None


def session(port: int, lines: list[bytes], *, wait_for_close: bool = False) -> None:
    """Send each line and read its reply; then close the socket without QUIT, or wait until
    the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in lines:
            sock.sendall(line)
            while reader.readline()[3:4] == b"-":
                pass
        while wait_for_close and reader.readline():
            pass


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        (b"RSET\r\n", "aborted by client: RSET"),
        (b"QUIT\r\n", "aborted by client: QUIT"),
        (b"EHLO again.test\r\n", "aborted by client: HELO/EHLO"),
        (b"NOOP\r\n", "aborted by client: disconnect"),
    ],
    ids=["rset", "quit", "ehlo", "disconnect"],
)
def test_aborted_transaction_gets_a_tempfail_outcome(
    gateway_factory: GatewayFactory, ending: bytes, reason: str
) -> None:
    plugin = Outcomes()
    egress = RecordingEgress()
    gateway = gateway_factory(egress, [plugin])
    envelope = [
        b"EHLO client.test\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<b@x.test>\r\n",
    ]
    session(gateway.port, [*envelope, ending])
    wait_until(lambda: plugin.disconnected)
    assert plugin.seen == [("a@example.com", "tempfail", reason)]
    assert egress.aborted == 1 and egress.delivered == []


def test_disconnect_in_the_middle_of_data_gets_an_outcome(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    plugin = Outcomes()
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [plugin])
    lines = [b"EHLO c.test\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@x.test>\r\n"]
    session(gateway.port, [*lines, b"DATA\r\n"])
    wait_until(lambda: plugin.disconnected)
    assert plugin.seen == [("a@example.com", "tempfail", "aborted by client: disconnect")]
    assert smtp_sink.messages() == []


def test_a_wrong_answer_in_the_middle_of_a_transaction_is_the_plugins_on_error(
    gateway_factory: GatewayFactory,
) -> None:
    plugin = Outcomes()
    gateway = gateway_factory(RecordingEgress(), [Crashes(), plugin])
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("b@example.net")[0] == 250
        # on_error = tempfail (the default): that recipient only; the transaction goes on.
        assert client.rcpt("crash@example.net")[0] == 451
        assert client.data(MESSAGE)[0] == 250
        assert client.sendmail("c@example.com", ["b@example.net"], MESSAGE) == {}
    wait_until(lambda: plugin.disconnected)
    assert plugin.seen == [
        ("a@example.com", "accept", "delivered"),
        ("c@example.com", "accept", "delivered"),
    ]


def test_a_timeout_in_the_middle_of_a_transaction_gets_an_outcome(
    gateway_factory: GatewayFactory,
) -> None:
    plugin = Outcomes()
    gateway = gateway_factory(RecordingEgress(), [plugin], command_timeout=0.3)
    session(
        gateway.port, [b"EHLO c.test\r\n", b"MAIL FROM:<a@example.com>\r\n"], wait_for_close=True
    )
    wait_until(lambda: plugin.disconnected)
    (seen,) = plugin.seen
    assert seen[:2] == ("a@example.com", "tempfail")
    assert seen[2].startswith("aborted: 421 Timeout exceeded")


def test_a_delivered_message_gets_exactly_one_outcome(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    plugin = Outcomes()
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [plugin])
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        client.rset()
    wait_until(lambda: plugin.disconnected)
    assert [kind for _, kind, _ in plugin.seen] == [VerdictKind.ACCEPT.value]
