"""Every listener limit at its edge: one below, at, and one above (issue: limits as documented)."""

from __future__ import annotations

import pytest

from tests.smtp.conftest import GatewayFactory
from tests.smtp.helpers import RecordingEgress, codes, raw_session

ENVELOPE = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


@pytest.mark.parametrize(("length", "code"), [(511, 250), (512, 250), (513, 500)])
def test_command_line_limit_counts_the_crlf(
    gateway_factory: GatewayFactory, length: int, code: int
) -> None:
    gateway = gateway_factory(RecordingEgress(), max_command_length=512)
    command = b"NOOP " + b"x" * (length - 7) + b"\r\n"
    assert len(command) == length
    assert codes(raw_session(gateway.port, command + b"QUIT\r\n"))[-2:] == [code, 221]


@pytest.mark.parametrize(("size", "code"), [(999, 250), (1000, 250), (1001, 552)])
def test_message_size_limit_counts_the_data_as_sent(
    gateway_factory: GatewayFactory, size: int, code: int
) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress, max_message_size=1000, add_received=False)
    head = b"Subject: s\r\n\r\n"
    line = b"x" * 48 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    body += b"y" * (size - len(head) - len(body) - 2) + b"\r\n"
    data = head + body
    assert len(data) == size
    transcript = raw_session(gateway.port, ENVELOPE + data + b".\r\nQUIT\r\n")
    assert codes(transcript)[-2:] == [code, 221]
    assert len(egress.delivered) == (code == 250)


@pytest.mark.parametrize(("size", "code"), [(999, 250), (1000, 250), (1001, 552)])
def test_size_parameter_limit(gateway_factory: GatewayFactory, size: int, code: int) -> None:
    gateway = gateway_factory(RecordingEgress(), max_message_size=1000)
    mail = b"MAIL FROM:<a@example.com> SIZE=%d\r\nQUIT\r\n" % size
    assert codes(raw_session(gateway.port, mail))[-2:] == [code, 221]


@pytest.mark.parametrize(("size", "code"), [(199, 250), (200, 250), (201, 552)])
def test_header_block_limit(gateway_factory: GatewayFactory, size: int, code: int) -> None:
    gateway = gateway_factory(RecordingEgress(), max_header_size=200, add_received=False)
    field = b"X-Pad: " + b"p" * (size - 9) + b"\r\n"
    assert len(field) == size
    transcript = raw_session(gateway.port, ENVELOPE + field + b"\r\nbody\r\n.\r\nQUIT\r\n")
    assert codes(transcript)[-2:] == [code, 221]


@pytest.mark.parametrize(("count", "last"), [(2, 250), (3, 250), (4, 452)])
def test_recipient_limit(gateway_factory: GatewayFactory, count: int, last: int) -> None:
    gateway = gateway_factory(RecordingEgress(), max_recipients=3)
    rcpts = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(count))
    transcript = raw_session(gateway.port, b"MAIL FROM:<a@example.com>\r\n" + rcpts + b"QUIT\r\n")
    assert codes(transcript)[-2:] == [last, 221]
