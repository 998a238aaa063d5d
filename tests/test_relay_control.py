"""Relay control against a real mailgate and smtp-sink: mailgate is not an open relay."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog.testing

from mailgate.app import App
from tests.peers.smtp_sink import SmtpSink

MESSAGE = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: relay\r\n\r\nhello\r\n"


@pytest.fixture
async def gate(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    """mailgate on 127.0.0.2 that lets only 127.0.0.1 relay, and receives for example.org."""
    (tmp_path / "mailgate.toml").write_text(
        '[relay_control]\ndomains = ["example.org", ".example.com"]\nnetworks = ["127.0.0.1/32"]\n'
    )
    app = App(
        tmp_path,
        listen="127.0.0.2:0",
        relay=f"{smtp_sink.host}:{smtp_sink.port}",
        configure_logs=False,
    )
    await app.start()
    yield app
    await app.stop()


def send(port: int, source: str, rcpts: list[str]) -> dict[str, tuple[int, bytes]]:
    """Send from `source` to each recipient; the refused ones with their replies."""
    with smtplib.SMTP("127.0.0.2", port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("client.example.net")
        client.mail("a@example.net")
        refused = {}
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                refused[rcpt] = (code, text)
        if len(refused) < len(rcpts):
            code, _ = client.data(MESSAGE)
            assert code == 250
        return refused


async def test_outside_client_cannot_relay(gate: App, smtp_sink: SmtpSink) -> None:
    refused = await asyncio.to_thread(
        send, gate.ports[0], "127.0.0.2", ["victim@elsewhere.test", "b@example.org"]
    )
    assert refused == {"victim@elsewhere.test": (554, b"5.7.1 Relay access denied")}
    (msg,) = smtp_sink.wait_for_messages(1)
    assert msg.rcpts == ("b@example.org",)


async def test_outside_client_reaches_local_and_sub_domains(gate: App, smtp_sink: SmtpSink) -> None:
    rcpts = ["b@EXAMPLE.org", "c@mx.example.com", "d@notexample.com", "e@example.com"]
    refused = await asyncio.to_thread(send, gate.ports[0], "127.0.0.2", rcpts)
    assert set(refused) == {"d@notexample.com", "e@example.com"}
    (msg,) = smtp_sink.wait_for_messages(1)
    assert msg.rcpts == ("b@EXAMPLE.org", "c@mx.example.com")


async def test_client_in_networks_may_relay(gate: App, smtp_sink: SmtpSink) -> None:
    refused = await asyncio.to_thread(send, gate.ports[0], "127.0.0.1", ["x@elsewhere.test"])
    assert refused == {}
    (msg,) = smtp_sink.wait_for_messages(1)
    assert msg.rcpts == ("x@elsewhere.test",)


def test_relay_control_is_on_with_no_files_at_all() -> None:
    app = App(None, listen="127.0.0.2:0", relay="127.0.0.1:25", configure_logs=False)
    assert [p.name for p in app.pipeline.plugins] == ["relay_control", "sender_auth"]
    settings = app.pipeline.plugins[0].instance.settings  # type: ignore[attr-defined]
    assert settings.networks.is_fixed and settings.domains.is_fixed
    assert (
        settings.networks.default == ["127.0.0.0/8", "::1/128"] and settings.domains.default == []
    )


ROUTED = ["v%evil.test@example.org", '"v@evil.test"@example.org', "evil.test!v@example.org"]


def send_raw(port: int, source: str, rcpts: list[str]) -> dict[str, int]:
    """RCPT each address as written (smtplib's rcpt() would re-quote it); the codes."""
    with smtplib.SMTP("127.0.0.2", port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("client.example.net")
        client.docmd("MAIL", "FROM:<a@example.net>")
        return {rcpt: client.docmd("RCPT", f"TO:<{rcpt}>")[0] for rcpt in rcpts}


async def test_routing_in_a_local_domains_address_is_refused_from_outside(gate: App) -> None:
    with structlog.testing.capture_logs() as logs:
        codes = await asyncio.to_thread(send_raw, gate.ports[0], "127.0.0.2", ROUTED)
    assert codes == dict.fromkeys(ROUTED, 554)
    reasons = [e["reason"] for e in logs if e["event"] == "recipient refused"]
    assert [(e["by"], e["code"]) for e in logs if e["event"] == "recipient refused"] == [
        ("relay_control", 554)
    ] * 3
    assert "percent hack (user%host)" in reasons[0] and "second @" in reasons[1]
    assert "bang path" in reasons[2]


async def test_routing_is_accepted_from_a_client_that_may_relay(gate: App) -> None:
    codes = await asyncio.to_thread(send_raw, gate.ports[0], "127.0.0.1", ROUTED)
    assert codes == dict.fromkeys(ROUTED, 250)


async def test_allow_untrusted_routing_accepts_it_for_local_domains_only(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    (tmp_path / "mailgate.toml").write_text(
        '[relay_control]\ndomains = ["example.org"]\nnetworks = ["127.0.0.1/32"]\n'
        "allow_untrusted_routing = true\n"
    )
    app = App(tmp_path, listen="127.0.0.2:0", relay=f"{smtp_sink.host}:{smtp_sink.port}")
    await app.start()
    try:
        rcpts = [*ROUTED, "victim%example.org@evil.test", "victim@evil.test%example.org"]
        codes = await asyncio.to_thread(send_raw, app.ports[0], "127.0.0.2", rcpts)
    finally:
        await app.stop()
    assert codes == {**dict.fromkeys(ROUTED, 250), rcpts[-2]: 554, rcpts[-1]: 554}
