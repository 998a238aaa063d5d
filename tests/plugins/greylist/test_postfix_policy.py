"""Greylisting where Postgrey sits: a real Postfix asks mailgate's policy listener
(``check_policy_service``) at RCPT TO, a real SMTP client retries, Postfix delivers."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from mailgate.app import App
from tests.peers.ports import free_port
from tests.peers.postfix import PostfixFactory

MESSAGE = b"From: a@example.net\r\nTo: bob@local.test\r\nSubject: greylisted\r\n\r\nhello\r\n"


def attempt(port: int) -> tuple[int, bytes]:
    """One message to Postfix: the RCPT reply if refused, else the end-of-data reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("alice@example.net")[0] == 250
        code, text = client.rcpt("bob@local.test")
        if code != 250:
            return code, text
        return client.data(MESSAGE)


async def test_postfix_greylists_through_the_policy_listener(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    (tmp_path / "16-greylist.toml").write_text(
        f'delay = 1.0\nexempt_networks = []\nstore = "sqlite:///{tmp_path}/greylist.db"\n'
    )
    address = f"inet:127.0.0.1:{free_port()}"
    app = App(tmp_path, policy=address, configure_logs=False)
    await app.start()
    try:
        postfix = postfix_factory()
        restriction = f"check_policy_service {address}, permit_mynetworks, reject"
        port = await asyncio.to_thread(
            postfix.add_listener, options={"smtpd_recipient_restrictions": restriction}
        )
        code, text = await asyncio.to_thread(attempt, port)
        assert code == 450
        assert b"4.7.1" in text and b"Greylisted, try again in 1 seconds" in text
        await asyncio.sleep(1.1)
        code, _ = await asyncio.to_thread(attempt, port)
        assert code == 250
        [delivered] = await asyncio.to_thread(postfix.wait_for_delivered, 1)
        assert b"Subject: greylisted" in delivered.data
    finally:
        await app.stop()
