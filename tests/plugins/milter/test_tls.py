"""TLS to a milter: a real opendkim behind a TLS terminator (HAProxy) on loopback."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
import structlog

from mailgate.config import ConfigError, load_settings
from mailgate.plugins.milter import MilterPlugin, MilterSettings
from tests.peers.certificate import named_certificate
from tests.peers.opendkim import OpenDkim
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls_terminator import TlsTerminatorFactory
from tests.plugins.milter.conftest import BridgeFactory, milter

NAME = "milter.mailgate.test"
SIGNABLE = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: over tls\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <tls@example.com>\r\n"
    b"\r\nhello\r\n"
)


@pytest.fixture(scope="module")
def server_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return named_certificate(tmp_path_factory.mktemp("milter-cert"), NAME)


@pytest.fixture(scope="module")
def other_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A certificate for the same name from another (self-signed) issuer."""
    return named_certificate(tmp_path_factory.mktemp("other-cert"), NAME)


def backend(opendkim: OpenDkim) -> tuple[str, int]:
    return ("127.0.0.1", opendkim.port)


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("a@example.com", ["b@example.net"], SIGNABLE)


def refusal(port: int) -> smtplib.SMTPDataError:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    with client, pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("a@example.com", ["b@example.net"], SIGNABLE)
    return err.value


def test_opendkim_over_tls_signs(
    opendkim_signer: OpenDkim,
    tls_terminator_factory: TlsTerminatorFactory,
    server_cert: tuple[str, str],
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
) -> None:
    tls = tls_terminator_factory(backend(opendkim_signer), server_cert)
    gw = bridge_factory(
        milter(tls.address, tls=True, tls_ca_file=server_cert[0], tls_server_name=NAME)
    )
    send(gw.port)
    [signed] = smtp_sink.wait_for_messages(1)
    assert "d=example.com" in (signed.header("DKIM-Signature") or "")


def test_a_certificate_that_does_not_verify_gets_the_failure_policy(
    opendkim_signer: OpenDkim,
    tls_terminator_factory: TlsTerminatorFactory,
    server_cert: tuple[str, str],
    other_cert: tuple[str, str],
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
) -> None:
    tls = tls_terminator_factory(backend(opendkim_signer), server_cert)
    untrusted = milter(
        tls.address,
        name="dkim-tls",
        tls=True,
        tls_ca_file=other_cert[0],
        tls_server_name=NAME,
        stages=["message"],
        on_failure="reject",
    )
    gw = bridge_factory(untrusted)
    with structlog.testing.capture_logs() as logs:
        err = refusal(gw.port)
    assert (err.smtp_code, err.smtp_error) == (554, b"5.7.1 Service unavailable")
    [failed] = [e for e in logs if e["event"] == "milter failed"]
    assert failed["milter"] == "dkim-tls" and failed["policy"] == "reject"
    assert "certificate does not verify" in failed["reason"], failed
    assert "certificate verify failed" in failed["reason"] or "self" in failed["reason"]
    assert smtp_sink.messages() == []

    wrong_name = milter(
        tls.address,
        tls=True,
        tls_ca_file=server_cert[0],
        tls_server_name="other.mailgate.test",
        stages=["message"],
        on_failure="skip",
    )
    with structlog.testing.capture_logs() as logs:
        send(bridge_factory(wrong_name).port)
    [passed] = smtp_sink.wait_for_messages(1)
    assert passed.header("DKIM-Signature") is None  # skipped: delivered unsigned
    [failed] = [e for e in logs if e["event"] == "milter failed"]
    assert "Hostname mismatch" in failed["reason"] or "hostname" in failed["reason"].lower()


def test_tls_verify_false_accepts_any_certificate(
    opendkim_signer: OpenDkim,
    tls_terminator_factory: TlsTerminatorFactory,
    server_cert: tuple[str, str],
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
) -> None:
    tls = tls_terminator_factory(backend(opendkim_signer), server_cert)
    send(bridge_factory(milter(tls.address, tls=True, tls_verify=False)).port)
    [signed] = smtp_sink.wait_for_messages(1)
    assert signed.header("DKIM-Signature") is not None


def test_a_client_certificate_is_presented_when_the_milter_requires_one(
    opendkim_signer: OpenDkim,
    tls_terminator_factory: TlsTerminatorFactory,
    server_cert: tuple[str, str],
    tmp_path: Path,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
) -> None:
    client_cert, client_key = named_certificate(tmp_path, "mailgate.client.test")
    tls = tls_terminator_factory(backend(opendkim_signer), server_cert, client_ca=client_cert)
    common = {"tls": True, "tls_ca_file": server_cert[0], "tls_server_name": NAME}
    with_cert = milter(tls.address, tls_cert_file=client_cert, tls_key_file=client_key, **common)
    send(bridge_factory(with_cert).port)
    [signed] = smtp_sink.wait_for_messages(1)
    assert signed.header("DKIM-Signature") is not None
    smtp_sink.clear()
    without = milter(tls.address, stages=["message"], on_failure="reject", **common)
    with structlog.testing.capture_logs() as logs:
        err = refusal(bridge_factory(without).port)
    assert err.smtp_code == 554
    [failed] = [e for e in logs if e["event"] == "milter failed"]
    assert "certificate required" in failed["reason"], failed


def test_tls_settings_are_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(MilterSettings, {"tls_ca_file": "/x.pem"}, source="40-milter.toml")
    assert "tls_ca_file" in str(err.value) and "tls is false" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(
            MilterSettings,
            {"address": "unix:/run/m.sock", "tls": True},
            source="40-milter.toml",
        )
    assert "tls" in str(err.value)
    missing = tmp_path / "missing.pem"
    settings = MilterSettings(tls=True, tls_ca_file=str(missing))
    with pytest.raises(ValueError, match=r"^tls_ca_file: cannot load"):
        MilterPlugin(settings)
