"""SMTP smuggling: a fake end of data followed by pipelined commands never becomes a second
message downstream, with real smtp-sink and real Postfix behind the real relay egress."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import FAKE_ENDS, codes, raw_session

ENVELOPE = b"MAIL FROM:<%s>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def attack(fake_end: bytes) -> bytes:
    """A message with a fake end, a smuggled message after it, then an honest control message."""
    return (
        ENVELOPE % b"a@example.com"
        + b"Subject: first\r\n\r\nfirst"
        + fake_end
        + ENVELOPE % b"evil@evil.test"
        + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        + ENVELOPE % b"control@example.com"
        + b"Subject: control\r\n\r\ncontrol\r\n.\r\nQUIT\r\n"
    )


def expected_messages(fake_end: bytes, mode: str) -> list[str]:
    """Subjects that may reach the downstream: the control, and the first message only where
    normalizing turned the fake end into content."""
    if mode == "normalize" and b"\0" not in fake_end:
        return ["control", "first"]
    return ["control"]


@pytest.mark.parametrize("mode", ["reject", "normalize"])
@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggled_message_never_reaches_smtp_sink(
    gateway_factory: GatewayFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    fake_end: bytes,
    mode: str,
) -> None:
    gateway = gateway_factory(
        relay_to(smtp_sink.host, smtp_sink.port, tmp_path), bare_line_endings=mode
    )
    transcript = raw_session(gateway.port, attack(fake_end))
    wanted = expected_messages(fake_end, mode)
    first_reply = 250 if "first" in wanted else 554
    assert codes(transcript)[-9:] == [250, 250, 354, first_reply, 250, 250, 354, 250, 221]
    got = smtp_sink.messages()
    assert sorted(m.header("Subject") or "" for m in got) == wanted
    assert all(m.mail_from != "evil@evil.test" for m in got)
    assert all(b"smuggled" not in m.data or m.header("Subject") == "first" for m in got)


@pytest.mark.parametrize("mode", ["reject", "normalize"])
@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggled_message_never_reaches_postfix(
    gateway_factory: GatewayFactory,
    postfix: Postfix,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    fake_end: bytes,
    mode: str,
) -> None:
    gateway = gateway_factory(
        relay_to(postfix.host, postfix.port, tmp_path), bare_line_endings=mode
    )
    transcript = raw_session(gateway.port, attack(fake_end))
    wanted = expected_messages(fake_end, mode)
    assert codes(transcript)[-2:] == [250, 221]
    got = smtp_sink.wait_for_messages(len(wanted))
    assert sorted(m.header("Subject") or "" for m in got) == wanted
    # Postfix logs every sender it queued: the smuggled one never got there.
    assert "evil@evil.test" not in postfix.maillog()
