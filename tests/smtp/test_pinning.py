"""No downstream pinning: a few clients cannot hold every session, every downstream process, or
one session forever (issue 9, item 3). Each limit with its standard reply."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mailgate.relay import RelayEgress
from tests.peers.postfix import PostfixFactory
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import RecordingEgress, codes, raw_session

MESSAGE = b"From: a@example.com\r\nSubject: legit\r\n\r\nhello\r\n"
ENVELOPE = [b"EHLO c.test\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@x.test>\r\n"]


def reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@contextlib.contextmanager
def held_sessions(
    port: int, count: int, source: str = "127.0.0.1", mail: bool = False
) -> Iterator[list[bytes]]:
    """`count` sessions that say EHLO (and MAIL) and then nothing; their last replies."""
    socks, last = [], []
    try:
        for _ in range(count):
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=(source, 0)
            )
            socks.append(sock)
            greeting = reply(sock)
            if not greeting.startswith(b"220"):
                last.append(greeting)
                continue
            sock.sendall(b"EHLO pin.test\r\n")
            answer = reply(sock)
            if mail:
                sock.sendall(b"MAIL FROM:<pin@example.com>\r\n")
                answer = reply(sock)
            last.append(answer)
        yield last
    finally:
        for sock in socks:
            sock.close()


def test_sessions_per_client_are_capped(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress(), max_sessions_per_client=2)
    with held_sessions(gateway.port, 3) as replies:
        assert [r[:3] for r in replies] == [b"250", b"250", b"421"]
        assert replies[2].startswith(b"421 4.7.0 Too many connections from your address")
        # Another address is not affected.
        with held_sessions(gateway.port, 1, source="127.0.0.2") as other:
            assert other[0].startswith(b"250")
    time.sleep(0.2)  # the closed sessions are counted out
    with held_sessions(gateway.port, 2) as replies:
        assert [r[:3] for r in replies] == [b"250", b"250"]


def test_sessions_overall_are_capped(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress(), max_sessions=2, max_sessions_per_client=0)
    with held_sessions(gateway.port, 1) as first, held_sessions(gateway.port, 1, "127.0.0.2"):
        assert first[0].startswith(b"250")
        with held_sessions(gateway.port, 1, source="127.0.0.3") as third:
            assert third[0].startswith(b"421 4.7.0 Too many connections")


def test_commands_without_progress_are_capped(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress(), max_junk_commands=3)
    transcript = raw_session(gateway.port, b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nNOOP\r\n")
    assert codes(transcript)[-4:] == [250, 250, 252, 421]
    assert "421 4.7.0 Too many commands without progress" in transcript
    # An accepted MAIL is progress: the count starts again.
    payload = b"NOOP\r\nNOOP\r\nMAIL FROM:<a@example.com>\r\nNOOP\r\nNOOP\r\nNOOP\r\nQUIT\r\n"
    assert codes(raw_session(gateway.port, payload))[-7:] == [250, 250, 250, 250, 250, 250, 221]


def test_a_transaction_without_a_recipient_is_not_held_open(
    gateway_factory: GatewayFactory,
) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress, envelope_timeout=0.5)
    started = time.monotonic()
    transcript = raw_session(gateway.port, b"MAIL FROM:<a@example.com>\r\n", timeout=5)
    assert codes(transcript)[-2:] == [250, 421]
    assert "421 4.4.2 No recipient in time" in transcript
    assert time.monotonic() - started < 3
    assert egress.aborted == 1  # the downstream transaction was let go


def test_noop_cannot_keep_a_transaction_alive(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress(), transaction_timeout=1.0)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        reply(sock)
        for command in (
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@example.com>\r\n",
            b"RCPT TO:<b@x.test>\r\n",
        ):
            sock.sendall(command)
            assert reply(sock)[:1] == b"2"
        deadline = time.monotonic() + 4
        answer = b""
        while time.monotonic() < deadline:
            sock.sendall(b"NOOP\r\n")
            answer = reply(sock)
            if not answer.startswith(b"250"):
                break
            time.sleep(0.2)
    assert answer.startswith(b"421 4.4.2 Transaction took too long")


def test_data_at_one_byte_a_tenth_of_a_second_is_cut_off(
    gateway_factory: GatewayFactory,
) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress, data_min_rate=100, data_rate_grace=0.5)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        reply(sock)
        for command in (
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@example.com>\r\n",
            b"RCPT TO:<b@x.test>\r\n",
            b"DATA\r\n",
        ):
            sock.sendall(command)
            reply(sock)
        started = time.monotonic()
        answer = b""
        for byte in MESSAGE * 10:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                answer += sock.recv(4096)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
    assert answer.startswith(b"421 4.4.2 Data arrives too slowly")
    assert 0.5 <= time.monotonic() - started < 5
    assert egress.delivered == []


def test_a_normal_message_is_well_over_the_minimum_rate(gateway_factory: GatewayFactory) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress, data_min_rate=100_000, data_rate_grace=0.5)
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        assert client.sendmail("a@example.com", ["b@x.test"], MESSAGE) == {}
    assert len(egress.delivered) == 1


def test_stalled_clients_cannot_take_every_downstream_process(
    gateway_factory: GatewayFactory,
    postfix_factory: PostfixFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    # A Postfix with 10 smtpd processes, as the one of the attack had 100.
    postfix = postfix_factory(relay=smtp_sink, main_cf={"default_process_limit": "10"})
    egress = relay_to(postfix.host, postfix.port, tmp_path)
    assert isinstance(egress, RelayEgress)
    egress.settings.max_transactions = 6
    egress.settings.xclient = False  # one downstream connection per transaction, not per client
    gateway = gateway_factory(egress, max_sessions_per_client=0, envelope_timeout=1.0)
    with held_sessions(gateway.port, 12, source="127.0.0.2", mail=True) as pinned:
        assert sum(r.startswith(b"250") for r in pinned) == 6
        assert all(r.startswith(b"451 4.3.2") for r in pinned if not r.startswith(b"250"))
        # Postfix is not exhausted: it still has processes for its other clients.
        with smtplib.SMTP(postfix.host, postfix.port, timeout=5) as direct:
            assert direct.ehlo("direct.test")[0] == 250
        # The stalled transactions are let go after envelope_timeout; a legitimate client that
        # tries again, as an MTA does after a 4xx, gets through.
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=20) as client:
            client.ehlo("legit.test")
            while client.mail("a@example.com")[0] != 250:
                client.rset()
                assert time.monotonic() - started < 5, "no transaction slot for a legitimate client"
                time.sleep(0.1)
            assert client.rcpt("b@example.net")[0] == 250
            assert client.data(MESSAGE)[0] == 250
    smtp_sink.wait_for_messages(1)
