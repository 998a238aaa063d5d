"""Real SMTP clients delivering into mailgate with CHUNKING offered.

Postfix (relayhost = mailgate) queues a message and its smtp client hands it to mailgate.
Postfix 3.7's SMTP *client* does not send BDAT even when CHUNKING is offered (its maillog with
``debug_peer_list`` shows EHLO ... 250-CHUNKING, then DATA; only its server side has BDAT), so
this proves that offering CHUNKING changes nothing for it and the message still relays byte
for byte. The BDAT client here is mailgate's own relay egress (it sends BDAT whenever the
downstream offers CHUNKING): one mailgate relaying into another, as in a chain of gateways,
the second relaying to smtp-sink. What arrives at the sink is, below the Received: lines,
byte for byte what was submitted.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

from mailgate.plugin import hookimpl
from mailgate.session import Session
from tests.peers.postfix import PostfixFactory
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import untraced, wait_until

HEAD = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: chunked\r\n"
    b"Date: Wed, 26 Nov 2025 01:50:00 +0000\r\nMessage-ID: <bdat-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n"
)
BODY = (
    b".leading dot\r\n.\r\nQUIT\r\ncaf\xc3\xa9 \xe2\x82\xac\r\n"
    + b"line of text 0123456789\r\n" * 12000
)
MESSAGE = HEAD + BODY  # about 300 KB: several 128 KiB chunks from mailgate's relay


def session_counters(captured_logs: list[dict[str, Any]], count: int) -> list[dict[str, int]]:
    wait_until(lambda: sum(e["event"] == "session end" for e in captured_logs) >= count)
    return [e["counters"] for e in captured_logs if e["event"] == "session end"]


def test_postfix_delivering_into_mailgate_relays_byte_for_byte(
    gateway_factory: GatewayFactory,
    postfix_factory: PostfixFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    captured_logs: list[dict[str, Any]],
) -> None:
    gate = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path / "q"))
    postfix = postfix_factory(relay=("127.0.0.1", gate.port))
    with smtplib.SMTP(*postfix.address, timeout=30) as client:
        client.ehlo("submitter.test")
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE, ["BODY=8BITMIME"])
    (got,) = smtp_sink.wait_for_messages(1, timeout=30)
    postfix.wait_for_log(r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent")
    # mailgate's Received:, then Postfix's, then the message as submitted.
    assert untraced(untraced(got.data)) == MESSAGE
    assert got.rcpts == ("b@example.net",) and "BODY=8BITMIME" in got.mail_params
    assert session_counters(captured_logs, 1)[0]["messages"] == 1


class CountsChunks:
    """Notes the session's BDAT chunk count at each message's end."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def on_message(self, session: Session) -> None:
        self.seen.append(session.counters.get("bdat_chunks", 0))


def test_bdat_from_mailgates_relay_into_mailgate_relays_byte_for_byte(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    counts = CountsChunks()
    inner = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path / "q1"), [counts])
    outer = gateway_factory(relay_to("127.0.0.1", inner.port, tmp_path / "q2"))
    with smtplib.SMTP("127.0.0.1", outer.port, timeout=30) as client:
        client.ehlo("submitter.test")
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE, ["BODY=8BITMIME"])
        client.sendmail("a@example.com", ["c@example.net"], HEAD + b"short\r\n", ["BODY=8BITMIME"])
    first, second = sorted(smtp_sink.wait_for_messages(2, timeout=30), key=lambda m: m.rcpts)
    assert untraced(untraced(first.data)) == MESSAGE
    assert untraced(untraced(second.data)) == HEAD + b"short\r\n"
    # The inner listener got the messages as BDAT chunks: 3 (128 KiB each), then 1 more on
    # the same pooled connection.
    assert counts.seen == [3, 4]
