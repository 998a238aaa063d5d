"""The Received trace header (RFC 5321 section 4.4) and the hop limit, with real downstreams."""

from __future__ import annotations

import re
import smtplib
import socket
from pathlib import Path

import pytest

from mailgate.message import Header, Message
from mailgate.plugin import hookimpl
from mailgate.smtp.trace import protocol_name
from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import Gateway, codes, raw_session

MESSAGE = b"From: a@example.com\r\nSubject: trace\r\n\r\nHello\r\n"
DATE = r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"


class FirstHeader:
    """Records the first header `on_message` sees."""

    def __init__(self) -> None:
        self.first: list[Header] = []

    @hookimpl
    def on_message(self, message: Message) -> None:
        self.first.append(message.headers[0])


@pytest.mark.parametrize(
    ("esmtp", "tls", "auth", "utf8", "name"),
    [
        (False, False, False, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, False, False, True, "UTF8SMTP"),
        (True, True, False, True, "UTF8SMTPS"),
        (True, False, True, True, "UTF8SMTPA"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_protocol_name_follows_rfc_3848_and_6531(
    esmtp: bool, tls: bool, auth: bool, utf8: bool, name: str
) -> None:
    assert protocol_name(esmtp=esmtp, tls=tls, authenticated=auth, smtputf8=utf8) == name


def test_received_is_added_at_the_top_before_plugins_see_the_message(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    plugin = FirstHeader()
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [plugin])
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
    (got,) = smtp_sink.messages()
    first_line, rest = got.data.split(b"\r\n", 1)
    assert first_line == b"Received: from client.test (unknown [127.0.0.1])"
    assert re.match(
        rb"\tby mx\.mailgate\.test \(mailgate\) with ESMTP id t[0-9a-f]+-\d+\r\n"
        rb"\tfor <b@example\.net>; " + DATE.encode() + rb"\r\n" + re.escape(MESSAGE) + rb"\Z",
        rest,
    ), rest
    (seen,) = plugin.first
    assert seen.name == "Received" and seen.value.startswith("from client.test ")


def test_received_has_no_for_clause_with_several_recipients_and_says_smtp_after_helo(
    sink_gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    with smtplib.SMTP("127.0.0.1", sink_gateway.port) as client:
        client.helo("old.client.test")
        assert client.sendmail("a@example.com", ["b@example.net", "c@example.net"], MESSAGE) == {}
    (got,) = smtp_sink.messages()
    received = got.data.split(b"\r\nFrom: ")[0].decode()
    assert re.fullmatch(
        r"Received: from old\.client\.test \(unknown \[127\.0\.0\.1\]\)\r\n"
        r"\tby mx\.mailgate\.test \(mailgate\) with SMTP id t[0-9a-f]+-\d+;\r\n"
        r"\t" + DATE,
        received,
    ), received


def test_received_says_utf8smtp_when_the_client_used_smtputf8(
    sink_gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    payload = (
        "MAIL FROM:<jösé@example.com> SMTPUTF8\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        "Subject: utf8\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    ).encode()
    assert codes(raw_session(sink_gateway.port, payload))[-5:] == [250, 250, 354, 250, 221]
    (got,) = smtp_sink.messages()
    assert "with UTF8SMTP id" in (got.header("Received") or "")


def test_a_hostile_helo_cannot_break_out_of_the_received_header(
    sink_gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    with socket.create_connection(("127.0.0.1", sink_gateway.port), timeout=10) as sock:
        sock.recv(1000)
        sock.sendall(b"EHLO a(b)\rX-Injected: yes\\\r\n")
        sock.recv(1000)
        sock.sendall(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
            + MESSAGE
            + b".\r\nQUIT\r\n"
        )
        while sock.recv(1000):
            pass
    (got,) = smtp_sink.messages()
    assert got.data.startswith(b"Received: from a?b??X-Injected:?yes? (unknown [127.0.0.1])\r\n")
    assert got.header("X-Injected") is None


def test_no_received_when_add_received_is_off(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    gateway = gateway_factory(
        relay_to(smtp_sink.host, smtp_sink.port, tmp_path), add_received=False
    )
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
    (got,) = smtp_sink.messages()
    assert got.data == MESSAGE


def hops(count: int) -> bytes:
    received = b"".join(
        b"Received: from h%d.test (h%d.test [192.0.2.%d])\r\n\tby mx.test; "
        b"Wed, 26 Nov 2026 01:00:00 +0000\r\n" % (i, i, i % 250)
        for i in range(count)
    )
    return received + MESSAGE


def test_more_than_max_received_hops_is_refused_as_a_mail_loop(
    sink_gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    with smtplib.SMTP("127.0.0.1", sink_gateway.port) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        assert client.data(hops(101)) == (554, b"5.4.6 Too many hops")
        assert client.sendmail("a@example.com", ["b@example.net"], hops(100)) == {}
    (got,) = smtp_sink.messages()
    assert got.data.count(b"\r\nReceived: ") == 100


def test_max_received_is_configurable(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), max_received=2)
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@example.com", ["b@example.net"], hops(3))
        assert refused.value.smtp_code == 554
        assert client.sendmail("a@example.com", ["b@example.net"], hops(2)) == {}
    assert len(smtp_sink.messages()) == 1


def test_postfix_puts_its_received_above_ours(
    gateway_factory: GatewayFactory, postfix: Postfix, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    gateway = gateway_factory(relay_to(postfix.host, postfix.port, tmp_path))
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
    (got,) = smtp_sink.wait_for_messages(1)
    text = got.data.decode()
    theirs, ours = re.findall(r"^Received: .*?(?=\r\n\S)", text, re.M | re.S)
    assert "(Postfix)" in theirs
    assert ours.startswith("Received: from client.test (unknown [127.0.0.1])\r\n")
    assert "by mx.mailgate.test (mailgate) with ESMTP id t" in ours
    assert "\r\nSubject: trace\r\n" in text and text.endswith("\r\n\r\nHello\r\n")
