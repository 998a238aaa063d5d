"""Replies to pipelined commands go out together, in order, in one write (RFC 2920)."""

from __future__ import annotations

import socket

import pytest

from mailgate.smtp.stream import SmtpStream
from tests.smtp.conftest import GatewayFactory
from tests.smtp.helpers import RecordingEgress, codes, raw_session


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the listener makes to its clients (the recording egress makes none)."""
    seen: list[bytes] = []

    flush, write_and_close = SmtpStream.flush, SmtpStream.write_and_close

    async def flushed(self: SmtpStream) -> None:
        if self.queued:
            seen.append(b"".join(self._out))
        await flush(self)

    def closed(self: SmtpStream, data: bytes = b"") -> None:
        if self.queued or data:
            seen.append(b"".join([*self._out, data]))
        write_and_close(self, data)

    monkeypatch.setattr(SmtpStream, "flush", flushed)
    monkeypatch.setattr(SmtpStream, "write_and_close", closed)
    return seen


def test_replies_to_a_pipelined_group_are_one_write(
    gateway_factory: GatewayFactory, writes: list[bytes]
) -> None:
    gateway = gateway_factory(RecordingEgress())
    transcript = raw_session(gateway.port, b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n" * 5 + b"QUIT\r\n")
    assert codes(transcript)[-21:] == [250, 250, 252, 214] * 5 + [221]
    greeting, ehlo, group = writes
    assert greeting.startswith(b"220 ") and ehlo.startswith(b"250-")
    assert group.count(b"\r\n") == 21 and group.endswith(b"221 2.0.0 Bye\r\n")


def test_a_whole_pipelined_transaction_needs_few_writes_and_keeps_the_order(
    gateway_factory: GatewayFactory, writes: list[bytes]
) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress)
    payload = (
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n"
        b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n"
    )
    transcript = raw_session(gateway.port, payload)
    assert codes(transcript)[-7:] == [250, 250, 250, 354, 250, 250, 221]
    assert b"".join(writes).decode() == transcript
    # MAIL and the first RCPT reply go out before the next downstream step; the last RCPT
    # reply goes with the 354, the end-of-data reply with those of NOOP and QUIT.
    assert len(writes) - 2 == 4
    assert len(egress.delivered) == 1


def test_a_reply_is_not_held_when_no_command_follows(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress())
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=2) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"NOOP\r\n")
        assert reader.readline() == b"250 2.0.0 OK\r\n"
