"""SMTP AUTH on the real listener with real TLS: smtplib, swaks and raw sockets as clients,
smtp-sink and Postfix downstream, the auth_file and sender_auth plugins in the chain."""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from mailgate.pipeline import EnabledPlugin
from mailgate.plugin import hookimpl
from mailgate.plugins.auth_file import AuthFile, AuthFileSettings, ScryptHash
from mailgate.plugins.sender_auth import SenderAuth
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import Gateway, codes, raw_session, wait_until

LOGIN, SECRET = "alice@example.org", "correct horse battery"
MESSAGE = b"From: alice@example.org\r\nTo: b@example.net\r\nSubject: auth\r\n\r\nhello\r\n"
DELAY = 0.2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PLAIN = b64(f"\0{LOGIN}\0{SECRET}".encode())


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"# test users\n{LOGIN}:{ScryptHash.make(SECRET, n=1024)}\n")
    return path


def auth_plugins(users: Path) -> list[EnabledPlugin]:
    return [
        EnabledPlugin("sender_auth", SenderAuth()),
        EnabledPlugin("auth_file", AuthFile(AuthFileSettings(path=str(users)))),
    ]


@pytest.fixture
def gateway(
    gateway_factory: GatewayFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    certificate: tuple[str, str],
    users: Path,
) -> Gateway:
    """TLS, AUTH only after STARTTLS (the default), relaying to smtp-sink."""
    cert, key = certificate
    return gateway_factory(
        relay_to(smtp_sink.host, smtp_sink.port, tmp_path / "q"),
        auth_plugins(users),
        tls_cert=cert,
        tls_key=key,
        auth_failure_delay=DELAY,
    )


@pytest.fixture
def clear_gateway(gateway_factory: GatewayFactory, users: Path) -> Gateway:
    """AUTH allowed without TLS (``auth_require_tls = false``), for raw-socket transcripts."""
    return gateway_factory(
        plugins=auth_plugins(users), auth_require_tls=False, auth_failure_delay=DELAY
    )


def tls_client(port: int, cert: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.test")
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    assert client.starttls(context=context)[0] == 220
    client.ehlo("client.test")
    return client


def test_auth_is_offered_only_after_starttls(
    gateway: Gateway, certificate: tuple[str, str]
) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", f"PLAIN {PLAIN}") == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
    with tls_client(gateway.port, certificate[0]) as client:
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("initial_response", [True, False])
def test_auth_succeeds_and_the_received_header_says_esmtpsa(
    gateway: Gateway,
    certificate: tuple[str, str],
    smtp_sink: SmtpSink,
    mechanism: str,
    initial_response: bool,
) -> None:
    with tls_client(gateway.port, certificate[0]) as client:
        client.user, client.password = LOGIN, SECRET
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, text = client.auth(mechanism, method, initial_response_ok=initial_response)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail(LOGIN, ["b@example.net"], MESSAGE) == {}
    (got,) = smtp_sink.wait_for_messages(1)
    assert "(mailgate) with ESMTPSA id t" in (got.header("Received") or "")


def test_wrong_password_gets_535_after_the_delay_and_may_try_again(
    gateway: Gateway, certificate: tuple[str, str]
) -> None:
    with tls_client(gateway.port, certificate[0]) as client:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            client.login(LOGIN, "wrong")
        assert time.monotonic() - started >= DELAY
        assert (err.value.smtp_code, err.value.smtp_error) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        assert client.login(LOGIN, SECRET)[0] == 235


def test_unknown_login_gets_the_same_535(clear_gateway: Gateway) -> None:
    unknown = b64(b"\0mallory@example.org\0" + SECRET.encode())
    transcript = raw_session(clear_gateway.port, f"AUTH PLAIN {unknown}\r\nQUIT\r\n".encode())
    assert "535 5.7.8 Authentication credentials invalid" in transcript


def test_failed_auth_counts_toward_the_error_limit(
    gateway_factory: GatewayFactory, users: Path
) -> None:
    gateway = gateway_factory(
        plugins=auth_plugins(users), auth_require_tls=False, auth_failure_delay=0, max_errors=2
    )
    bad = b64(f"\0{LOGIN}\0nope".encode())
    transcript = raw_session(gateway.port, f"AUTH PLAIN {bad}\r\n".encode() * 3)
    assert codes(transcript)[-3:] == [535, 535, 421]


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        ("AUTH PLAIN\r\n*\r\n", ["334 ", "501 5.7.0 Authentication cancelled"]),
        ("AUTH LOGIN\r\n*\r\n", ["334 VXNlcm5hbWU6", "501 5.7.0 Authentication cancelled"]),
        (f"AUTH LOGIN {b64(LOGIN.encode())}\r\n*\r\n", ["334 UGFzc3dvcmQ6", "501 5.7.0"]),
        ("AUTH PLAIN !!notbase64\r\n", ["501 5.5.2 Cannot decode response"]),
        ("AUTH PLAIN\r\nAAAA\r\n", ["334 ", "501 5.5.2 Cannot decode response"]),
        ("AUTH PLAIN =\r\n", ["501 5.5.2 Cannot decode response"]),
        ("AUTH CRAM-MD5\r\n", ["504 5.5.4 Unrecognized authentication type"]),
        ("AUTH\r\n", ["501 5.5.4"]),
        (
            f"AUTH PLAIN {PLAIN}\r\nAUTH PLAIN {PLAIN}\r\n",
            ["235 2.7.0", "503 5.5.1 Already authenticated"],
        ),
        (
            f"MAIL FROM:<{LOGIN}>\r\nAUTH PLAIN {PLAIN}\r\n",
            ["250 2.1.0", "503 5.5.1 AUTH not allowed during a mail transaction"],
        ),
        (
            f"AUTH PLAIN\r\n{PLAIN}\r\nMAIL FROM:<{LOGIN}> AUTH=<>\r\n",
            ["334 ", "235 2.7.0", "250 2.1.0"],
        ),
        # A response over RFC 4954's 12,288 bytes ends the exchange; the next line is a command,
        # not the user name.
        (
            "AUTH LOGIN\r\n" + "A" * 20_000 + "\r\nNOOP\r\n",
            ["334 VXNlcm5hbWU6", "500 5.5.2 Line too long", "250 "],
        ),
        (
            "AUTH LOGIN " + "A" * 20_000 + "\r\nNOOP\r\n",
            ["500 5.5.2 Line too long", "250 "],
        ),
    ],
)
def test_auth_exchange_replies(clear_gateway: Gateway, commands: str, expected: list[str]) -> None:
    transcript = raw_session(clear_gateway.port, (commands + "QUIT\r\n").encode())
    lines = transcript.split("\r\n")
    ehlo_end = next(i for i, line in enumerate(lines) if line.startswith("250 "))
    replies = lines[ehlo_end + 1 : ehlo_end + 1 + len(expected)]
    assert [r[: len(e)] for r, e in zip(replies, expected, strict=True)] == expected, transcript


def test_auth_is_offered_in_clear_text_only_when_tls_is_not_required(
    clear_gateway: Gateway,
) -> None:
    transcript = raw_session(clear_gateway.port, b"QUIT\r\n")
    assert "250-AUTH PLAIN LOGIN\r\n" in transcript


def test_auth_is_not_offered_without_an_authenticate_plugin(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory(auth_require_tls=False)
    transcript = raw_session(gateway.port, f"AUTH PLAIN {PLAIN}\r\nQUIT\r\n".encode())
    assert "AUTH" not in transcript.split("\r\n250 ")[0]
    assert "503 5.5.1 Authentication not enabled" in transcript


class BrokenDirectory:
    """An authenticate plugin whose backend is down."""

    @hookimpl
    def authenticate(self, login: str, secret: str) -> bool:
        raise ConnectionError("directory unreachable")


def test_a_failing_plugin_is_a_temporary_failure(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(plugins=[BrokenDirectory()], auth_require_tls=False)
    transcript = raw_session(gateway.port, f"AUTH PLAIN {PLAIN}\r\nQUIT\r\n".encode())
    assert "454 4.7.0 Temporary authentication failure" in transcript


def test_sender_must_be_owned_by_the_login(
    gateway: Gateway, certificate: tuple[str, str], smtp_sink: SmtpSink
) -> None:
    with tls_client(gateway.port, certificate[0]) as client:
        client.login(LOGIN, SECRET)
        assert client.mail("ceo@example.org") == (
            553,
            b"5.7.1 Sender address not owned by user alice@example.org",
        )
        assert client.mail("alice+news@example.org")[0] == 250
        client.rset()
    with tls_client(gateway.port, certificate[0]) as client:
        # Without AUTH, sender ownership does not apply.
        assert client.mail("ceo@example.org")[0] == 250


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test", "--tls",
         "--from", LOGIN, "--to", "b@example.net", "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_authenticates_with_tls(
    gateway: Gateway, smtp_sink: SmtpSink, mechanism: str
) -> None:
    good = swaks(gateway.port, "--auth", mechanism, "--auth-user", LOGIN, "--auth-password", SECRET)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "<~  235 2.7.0 Authentication successful" in good.stdout
    (got,) = smtp_sink.wait_for_messages(1)
    assert "with ESMTPSA" in (got.header("Received") or "")
    bad = swaks(gateway.port, "--auth", mechanism, "--auth-user", LOGIN, "--auth-password", "x")
    assert bad.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in bad.stdout


def test_secrets_never_reach_the_logs(
    captured_logs: list[dict[str, object]], clear_gateway: Gateway
) -> None:
    bad = b64(f"\0{LOGIN}\0{SECRET}-wrong".encode())
    user, password = b64(LOGIN.encode()), b64(SECRET.encode())
    commands = f"AUTH PLAIN {bad}\r\nAUTH LOGIN {user}\r\n{password}\r\nQUIT\r\n"
    transcript = raw_session(clear_gateway.port, commands.encode())
    assert codes(transcript)[-3:] == [334, 235, 221]
    wait_until(lambda: any(line["event"] == "session end" for line in captured_logs))
    text = json.dumps(captured_logs, default=str)
    for secret in (SECRET, password, bad):
        assert secret not in text
    events = {(line["event"], line.get("login")) for line in captured_logs}
    assert ("authentication failed", LOGIN) in events
    assert ("authenticated", LOGIN) in events
