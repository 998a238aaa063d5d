"""STARTTLS with a configured certificate, and the structured log lines of a session."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import codes, raw_session, untraced, wait_until

MESSAGE = b"From: a@example.com\r\nSubject: tls\r\n\r\nsecret\r\n"


def test_starttls_is_offered_and_works_with_a_certificate(
    gateway_factory: GatewayFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    certificate: tuple[str, str],
) -> None:
    cert, key = certificate
    gateway = gateway_factory(
        relay_to(smtp_sink.host, smtp_sink.port, tmp_path), tls_cert=cert, tls_key=key
    )
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        assert client.starttls(context=context)[0] == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
    (got,) = smtp_sink.messages()
    assert untraced(got.data) == MESSAGE
    received = got.header("Received") or ""
    assert "(using TLSv1.3 with cipher TLS_" in received
    assert "by mx.mailgate.test (mailgate) with ESMTPS id t" in received


def test_commands_sent_with_starttls_in_clear_text_are_dropped(
    gateway_factory: GatewayFactory, tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    gateway = gateway_factory(tls_cert=cert, tls_key=key)
    transcript = raw_session(gateway.port, b"STARTTLS\r\nNOOP\r\n", timeout=1.0)
    # Only the 220 to STARTTLS: the injected NOOP was discarded, not answered in clear text.
    assert codes(transcript)[-1] == 220


def test_every_log_line_carries_the_session_and_one_line_gives_the_outcome(
    captured_logs: list[dict[str, object]],
    gateway_factory: GatewayFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path))
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.sendmail("a@example.com", ["b@example.net", "c@example.net"], MESSAGE)
    wait_until(lambda: any(line["event"] == "session end" for line in captured_logs))
    session_lines = [line for line in captured_logs if line["event"] != "smtp listener started"]
    assert all(str(line.get("session", "")).startswith("s") for line in session_lines)
    (outcome,) = [line for line in captured_logs if line["event"] == "message outcome"]
    assert str(outcome["tx"]).startswith("t")
    assert outcome["sender"] == "a@example.com"
    assert outcome["rcpts"] == 2
    # The size as relayed: with the Received header mailgate added.
    assert len(MESSAGE) + 100 < int(str(outcome["size"])) < len(MESSAGE) + 400
    assert outcome["verdict"] == "accept"
    assert str(outcome["reply"]).startswith("250")
    assert isinstance(outcome["elapsed_ms"], float)
