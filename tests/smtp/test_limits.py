"""Limits and their standard replies: sizes, lines, headers, recipients, timeouts, errors."""

from __future__ import annotations

import smtplib
import socket
import time
from pathlib import Path

from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import RecordingEgress, codes, raw_session, wait_until

ENVELOPE = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def sink_gateway_with(
    factory: GatewayFactory, sink: SmtpSink, tmp_path: Path, **settings: object
) -> int:
    return factory(relay_to(sink.host, sink.port, tmp_path), **settings).port


def test_size_parameter_over_the_limit_is_refused_at_mail(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    port = sink_gateway_with(gateway_factory, smtp_sink, tmp_path, max_message_size=1000)
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("client.test")
        code, text = client.mail("a@example.com", ["SIZE=1001"])
        assert (code, text[:5]) == (552, b"5.3.4")
        assert client.mail("a@example.com", ["SIZE=1000"])[0] == 250


def test_message_over_the_limit_is_refused_at_end_of_data_and_session_goes_on(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    port = sink_gateway_with(gateway_factory, smtp_sink, tmp_path, max_message_size=1000)
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20 + b".\r\n"
    small = b"Subject: small\r\n\r\nhi\r\n.\r\n"
    transcript = raw_session(port, ENVELOPE + big + ENVELOPE + small + b"QUIT\r\n")
    assert codes(transcript)[-9:] == [250, 250, 354, 552, 250, 250, 354, 250, 221]
    assert "552 5.3.4" in transcript
    assert [m.header("Subject") for m in smtp_sink.messages()] == ["small"]


def test_long_line_in_data_is_refused(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    port = sink_gateway_with(gateway_factory, smtp_sink, tmp_path)
    data = b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\nQUIT\r\n"
    transcript = raw_session(port, ENVELOPE + data)
    assert "500 5.5.2" in transcript
    assert codes(transcript)[-2:] == [500, 221]
    assert smtp_sink.messages() == []


def test_long_command_line_is_refused(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    port = sink_gateway_with(gateway_factory, smtp_sink, tmp_path)
    transcript = raw_session(
        port, b"NOOP " + b"z" * 600 + b"\r\nNOOP " + b"z" * 70000 + b"\r\nQUIT\r\n"
    )
    assert codes(transcript)[-3:] == [500, 500, 221]
    assert "500 5.5.2" in transcript


def test_header_block_over_the_limit_is_refused(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    port = sink_gateway_with(gateway_factory, smtp_sink, tmp_path, max_header_size=2000)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(50))
    transcript = raw_session(port, ENVELOPE + headers + b"\r\nbody\r\n.\r\nQUIT\r\n")
    assert codes(transcript)[-2:] == [552, 221]
    assert "552 5.3.4" in transcript
    assert smtp_sink.messages() == []


def test_recipients_over_the_limit_get_452(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    port = sink_gateway_with(gateway_factory, smtp_sink, tmp_path, max_recipients=2)
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        replies = [client.rcpt(f"r{i}@example.net") for i in range(3)]
        assert [r[0] for r in replies] == [250, 250, 452]
        assert replies[2][1].startswith(b"4.5.3")
        assert client.data(b"Subject: x\r\n\r\nx\r\n")[0] == 250
    (got,) = smtp_sink.messages()
    assert got.rcpts == ("r0@example.net", "r1@example.net")


def test_command_timeout_closes_with_421(gateway_factory: GatewayFactory) -> None:
    port = gateway_factory(command_timeout=0.3).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.splitlines()[-1].startswith(b"421 4.4.2")
    assert time.monotonic() - started < 3


def test_data_timeout_closes_with_421_and_nothing_is_delivered(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory(data_timeout=0.3)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"EHLO c.test\r\n" + ENVELOPE + b"Subject: slow\r\n\r\npart")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.splitlines()[-1].startswith(b"421 4.4.2")
    egress = gateway.egress
    assert isinstance(egress, RecordingEgress)
    wait_until(lambda: egress.aborted == 1)
    assert egress.delivered == []


def test_too_many_errors_close_the_session(gateway_factory: GatewayFactory) -> None:
    port = gateway_factory(max_errors=3).port
    transcript = raw_session(port, b"BOGUS\r\n" * 10)
    assert codes(transcript)[-4:] == [500, 500, 500, 421]
    assert "421 4.7.0" in transcript
