"""End to end: SMTP client -> mailgate (clamav + spamassassin) -> real Postfix -> Maildir."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailgate.app import App
from tests.peers.clamd import EICAR, Clamd
from tests.peers.postfix import Postfix, PostfixFactory
from tests.peers.spamd import GTUBE, Spamd
from tests.plugins import messages as m

RCPT = "bob@local.test"


@pytest.fixture
def downstream(postfix_factory: PostfixFactory) -> Postfix:
    """A private Postfix that delivers @local.test to its Maildir."""
    return postfix_factory()


@pytest.fixture
async def gate(
    tmp_path: Path, clamd: Clamd, spamd: Spamd, downstream: Postfix
) -> AsyncIterator[App]:
    """mailgate with both scanners enabled by conf.d files, relaying to Postfix."""
    (tmp_path / "50-clamav.toml").write_text(
        f'servers = ["{clamd.unix_address}", "{clamd.tcp_address}"]\n'
    )
    (tmp_path / "60-spamassassin.toml").write_text(
        f'servers = ["{spamd.tcp_address}"]\nsubject_tag = "[SPAM]"\n'
        'tag_threshold = [{ if = "authenticated", then = 5.0 }, { else = -50.0 }]\n'
    )
    host, port = downstream.address
    app = App(tmp_path, listen="127.0.0.1:0", relay=f"{host}:{port}", configure_logs=False)
    await app.start()
    yield app
    await app.stop()


def send(port: int, data: bytes) -> tuple[int, bytes]:
    """Send one message to RCPT; the reply to the end of data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail("alice@example.com")
        code, text = client.rcpt(RCPT)
        assert code == 250, text
        client.putcmd("data")
        code, text = client.getreply()
        assert code == 354, text
        client.send(data + b".\r\n")
        return client.getreply()


async def test_virus_is_refused_at_end_of_data_and_never_reaches_postfix(
    gate: App, downstream: Postfix
) -> None:
    code, text = await asyncio.to_thread(send, gate.ports[0], m.eicar_inline())
    assert code == 554
    assert text.startswith(b"5.7.1 Virus found: Eicar-Test-Signature")
    assert downstream.delivered() == []


async def test_gtube_is_refused(gate: App, downstream: Postfix) -> None:
    code, text = await asyncio.to_thread(send, gate.ports[0], m.gtube())
    assert (code, text) == (554, b"5.7.1 Message rejected as spam")
    assert downstream.delivered() == []


async def test_ham_is_delivered_with_spam_headers_and_without_forged_ones(
    gate: App, downstream: Postfix
) -> None:
    raw = m.plain(b"see you tomorrow\r\n", extra_headers=b"X-Spam-Flag: NO\r\n")
    code, _ = await asyncio.to_thread(send, gate.ports[0], raw)
    assert code == 250
    (delivered,) = downstream.wait_for_delivered(1)
    msg = delivered.message
    assert msg.get_all("X-Spam-Flag") == ["YES"]  # unauthenticated: tagged from -50
    assert str(msg["X-Spam-Status"]).startswith("Yes, score=")
    assert msg["Subject"] == "[SPAM] Hello"
    assert EICAR not in delivered.data and GTUBE not in delivered.data
