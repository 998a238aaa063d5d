"""A blocking SMTP client for the limits and greylist tests (run it with asyncio.to_thread)."""

from __future__ import annotations

import smtplib

MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: limits\r\n\r\nhello\r\n"


def greeting(port: int, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """Connect from `source`, read the greeting, QUIT; returns the greeting's code and text."""
    client = smtplib.SMTP(timeout=10, source_address=(source, 0))
    try:
        return client.connect("127.0.0.1", port)
    finally:
        client.close()


def send(
    port: int,
    sender: str = "alice@example.net",
    recipients: tuple[str, ...] = ("bob@example.org",),
    message: bytes = MESSAGE,
    *,
    source: str = "127.0.0.1",
    size: int | None = None,
) -> tuple[int, bytes, dict[str, tuple[int, bytes]]]:
    """One transaction: returns the last reply (MAIL's if refused, else DATA's, or the last
    RCPT's when none was accepted) and each recipient's reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("client.example")
        options = [f"SIZE={size}"] if size is not None else []
        code, text = client.mail(sender, options)
        if code != 250:
            return code, text, {}
        replies = {r: client.rcpt(r) for r in recipients}
        if not any(c == 250 for c, _ in replies.values()):
            client.rset()
            last = list(replies.values())[-1]
            return last[0], last[1], replies
        code, text = client.data(message)
        return code, text, replies
