"""XCLIENT and XFORWARD through the listener and the relay, with real Postfix and smtp-sink.

With XCLIENT (Postfix offers it to ``smtpd_authorized_xclient_hosts``) Postfix takes the
connection as the client's own: ``client=unknown[127.0.0.2], orig_queue_id=t...``. With
XFORWARD alone it logs the forwarded client beside mailgate:
``client=localhost[127.0.0.1], orig_queue_id=t..., orig_client=unknown[127.0.0.2]``.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from mailgate.relay import RelayEgress
from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to

MESSAGE = b"From: a@example.com\r\nSubject: xforward\r\n\r\nHello\r\n"
CLIENT = ("127.0.0.2", 0)  # not mailgate's own 127.0.0.1, so Postfix's log tells them apart


def send_two(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, source_address=CLIENT) as client:
        client.ehlo("client.test")
        for _ in range(2):
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}


@pytest.mark.parametrize(
    ("xclient", "logged"),
    [
        # XCLIENT: Postfix takes the connection as the client's own.
        (True, r"client=unknown\[127\.0\.0\.2\], orig_queue_id=t[0-9a-f]+-\d+$"),
        # XFORWARD alone: mailgate's connection, the client forwarded beside it.
        (
            False,
            r"client=localhost\[127\.0\.0\.1\], orig_queue_id=t[0-9a-f]+-\d+, "
            r"orig_client=unknown\[127\.0\.0\.2\]$",
        ),
    ],
)
def test_postfix_logs_the_original_client_for_every_pooled_transaction(
    gateway_factory: GatewayFactory,
    postfix: Postfix,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    xclient: bool,
    logged: str,
) -> None:
    egress = relay_to(postfix.host, postfix.port, tmp_path)
    egress.settings.xclient = xclient
    gateway = gateway_factory(egress)
    send_two(gateway.port)
    smtp_sink.wait_for_messages(2)
    assert isinstance(egress, RelayEgress) and egress.pool.opened == 1
    lines = re.findall(r"smtpd\[\d+\]: \w+: client=.*", postfix.maillog())
    assert len(lines) == 2
    for line in lines:
        assert re.search(logged, line), line


def test_no_xforward_when_switched_off(
    gateway_factory: GatewayFactory, postfix: Postfix, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    egress = relay_to(postfix.host, postfix.port, tmp_path)
    egress.settings.xforward = False
    egress.settings.xclient = False
    gateway = gateway_factory(egress)
    send_two(gateway.port)
    smtp_sink.wait_for_messages(2)
    assert "orig_client=" not in postfix.maillog()


def test_smtp_sink_accepts_xforward(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    # smtp-sink answers XFORWARD with 250 but does not write the attributes to its dump:
    # X-Client-Addr stays the connection's own address.
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path))
    send_two(gateway.port)
    got = smtp_sink.messages()
    assert len(got) == 2 and all(m.client_addr == "127.0.0.1" for m in got)
