"""Faults that a real peer produces on demand: the spool disk fills during DATA, the DNS server
says nothing, the downstream accepts RCPT and then closes. Each gives the client a 4xx and a log
line, delivers nothing, and leaves no file behind (issue 9, item 8)."""

from __future__ import annotations

import asyncio
import os
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing

from mailgate.app import App
from tests.peers.smtp_sink import SmtpSink, SmtpSinkFactory
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import RecordingEgress, codes, raw_session


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, mounted for the test (the tests run as root)."""
    mount = tmp_path / "spool"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_spool_disk_is_452_and_the_body_is_never_read_as_commands(
    gateway_factory: GatewayFactory, small_disk: Path
) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress, spool_directory=str(small_disk), spool_threshold=4096)
    # A megabyte of body lines that look like commands: none may run.
    smuggled = b"RSET\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\n"
    body = smuggled * (1024 * 1024 // len(smuggled))
    payload = (
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        b"Subject: big\r\n\r\n" + body + b".\r\nNOOP\r\nQUIT\r\n"
    )
    transcript = raw_session(gateway.port, payload, timeout=20)
    assert codes(transcript)[-6:] == [250, 250, 354, 452, 250, 221], transcript[-300:]
    assert "452 4.3.1 Insufficient system storage" in transcript
    assert egress.delivered == [] and egress.rcpts == ["b@example.net"]
    assert os.listdir(small_disk) == []


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """A name server that reads queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_a_silent_dns_server_is_a_4xx_from_spf(
    tmp_path: Path, smtp_sink: SmtpSink, silent_dns: str
) -> None:
    (tmp_path / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{silent_dns}"]\ntimeout = 0.5\n'
    )
    (tmp_path / "80-spf.toml").write_text('skip_networks = []\nreceiver = "gate.test"\n')
    app = App(tmp_path, listen="127.0.0.1:0", relay=f"{smtp_sink.host}:{smtp_sink.port}")
    await app.start()
    try:
        with structlog.testing.capture_logs() as logs:
            code, text = await asyncio.to_thread(mail_from, app.ports[0], "a@spf.example")
    finally:
        await app.stop()
    assert (code, text[:8]) == (451, b"4.7.24 S")
    assert any(e["event"] == "sender refused" and e["by"] == "spf" for e in logs)
    assert smtp_sink.messages() == []


def mail_from(port: int, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        return client.mail(sender)


def test_a_downstream_that_closes_before_data_is_a_4xx(
    gateway_factory: GatewayFactory, smtp_sink_factory: SmtpSinkFactory, tmp_path: Path
) -> None:
    sink = smtp_sink_factory(disconnect=["DATA"])  # smtp-sink offers no CHUNKING: DATA it is
    gateway = gateway_factory(relay_to(sink.host, sink.port, tmp_path / "q"))
    with structlog.testing.capture_logs() as logs, smtplib.SMTP("127.0.0.1", gateway.port) as c:
        c.ehlo("client.test")
        assert c.mail("a@example.com")[0] == 250
        assert c.rcpt("b@example.net")[0] == 250
        code, text = c.data(b"Subject: x\r\n\r\nhello\r\n")
    assert code == 451 and text.startswith(b"4.4.2 Downstream connection lost")
    (warning,) = [e for e in logs if e["event"] == "downstream failed"]
    assert warning["log_level"] == "warning" and warning["kind"] == "unavailable"
    assert sink.messages() == [] and not (tmp_path / "q").exists()
