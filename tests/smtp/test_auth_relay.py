"""AUTH end to end: mailgate from a configuration directory (auth_file in conf.d, sender_auth
built in), listening on 127.0.0.2 where only 127.0.0.1 may relay, in front of a real Postfix."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailgate.app import App
from mailgate.plugins.auth_file import ScryptHash
from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SmtpSink

LOGIN, SECRET = "alice@example.org", "correct horse battery"
MESSAGE = b"From: alice@example.org\r\nTo: x@elsewhere.test\r\nSubject: relay\r\n\r\nhello\r\n"


@pytest.fixture
async def gate(
    tmp_path: Path, postfix: Postfix, certificate: tuple[str, str]
) -> AsyncIterator[App]:
    cert, key = certificate
    (tmp_path / "users").write_text(f"{LOGIN}:{ScryptHash.make(SECRET, n=1024)}\n")
    (tmp_path / "mailgate.toml").write_text(
        f'[[listener]]\ntls_cert = "{cert}"\ntls_key = "{key}"\nauth_failure_delay = 0.05\n'
        '[relay_control]\ndomains = ["example.org"]\nnetworks = ["127.0.0.1/32"]\n'
    )
    (tmp_path / "30-auth_file.toml").write_text(f'path = "{tmp_path / "users"}"\n')
    host, port = postfix.address
    app = App(tmp_path, listen="127.0.0.2:0", relay=f"{host}:{port}", configure_logs=False)
    await app.start()
    yield app
    await app.stop()


def send(port: int, cert: str, *, login: bool, sender: str = LOGIN) -> tuple[int, bytes]:
    """From 127.0.0.2 (outside `networks`), over TLS: the reply to the first refused command,
    or to the end of data."""
    with smtplib.SMTP("127.0.0.2", port, source_address=("127.0.0.2", 0), timeout=10) as client:
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        client.starttls(context=context)
        client.ehlo("client.example.net")
        if login:
            client.login(LOGIN, SECRET)
        for reply in (client.mail(sender), client.rcpt("x@elsewhere.test")):
            if reply[0] != 250:
                return reply
        return client.data(MESSAGE)


async def test_relay_from_outside_networks_only_after_auth(
    gate: App, postfix: Postfix, smtp_sink: SmtpSink, certificate: tuple[str, str]
) -> None:
    port, cert = gate.ports[0], certificate[0]
    refused = await asyncio.to_thread(send, port, cert, login=False)
    assert refused == (554, b"5.7.1 Relay access denied")
    code, _ = await asyncio.to_thread(send, port, cert, login=True)
    assert code == 250
    (got,) = smtp_sink.wait_for_messages(1)
    assert got.rcpts == ("x@elsewhere.test",)
    assert "by mx.pf.test" in (got.header("Received") or "")
    received = [h for h in got.data.decode().split("\r\n") if "(mailgate) with" in h]
    assert received and "with ESMTPSA" in received[0]


async def test_authenticated_sender_must_own_its_address(
    gate: App, certificate: tuple[str, str]
) -> None:
    reply = await asyncio.to_thread(
        send, gate.ports[0], certificate[0], login=True, sender="ceo@example.org"
    )
    assert reply == (553, b"5.7.1 Sender address not owned by user alice@example.org")
