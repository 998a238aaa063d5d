"""A mailgate whose directory is a real slapd, SQLite or PostgreSQL, relaying to smtp-sink."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mailgate.app import App
from tests.apps import started_apps
from tests.peers.smtp_sink import SmtpSink

MAILGATE_TOML = """
[[listener]]
type = "smtp"
address = "127.0.0.1:0"
auth_require_tls = false
auth_failure_delay = 0

[relay_control]
domains = ["example.org"]
networks = []
"""

VERIFY = 'domains = ["example.org"]\n'
REWRITE = 'use_directory = true\ncatch_all = { "@example.net" = "alice@example.org" }\n'


def sha512_crypt(password: str) -> str:
    """A ``{SHA512-CRYPT}`` hash made by openssl (an independent implementation)."""
    argv = ["openssl", "passwd", "-6", "-salt", "s0mesalt", password]
    return (
        "{SHA512-CRYPT}"
        + subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    )


def write_conf(conf: Path, backend: str, backend_toml: str) -> Path:
    """mailgate.toml and the conf.d files: the backend, directory_auth, rewrite, verify."""
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "mailgate.toml").write_text(MAILGATE_TOML)
    (conf / f"05-{backend}.toml").write_text(backend_toml)
    (conf / "30-directory_auth.toml").write_text("")
    (conf / "70-rewrite.toml").write_text(REWRITE)
    (conf / "72-recipient_verify.toml").write_text(VERIFY)
    return conf


GateFactory = Callable[[str, str], "AsyncIterator[App]"]


@pytest.fixture
async def start_gate(
    tmp_path: Path, smtp_sink: SmtpSink
) -> AsyncIterator[Callable[[str, str], object]]:
    """Start a mailgate with one directory backend (its name and its conf.d text)."""
    async with started_apps() as apps:

        async def start(backend: str, text: str) -> App:
            conf = write_conf(tmp_path / f"conf{len(apps)}", backend, text)
            host, port = smtp_sink.address
            return await apps.start(conf, relay=f"{host}:{port}")

        yield start


def rcpt_codes(port: int, rcpts: list[str], login: tuple[str, str] | None = None) -> list[int]:
    """RCPT each address in one transaction (sender <>); the codes, then QUIT without DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        if login:
            client.login(*login)
        code, text = client.mail("")
        assert code == 250, text
        return [client.rcpt(r)[0] for r in rcpts]


def rcpt_reply(port: int, rcpt: str) -> tuple[int, bytes]:
    """The reply to one RCPT."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail("")
        return client.rcpt(rcpt)


def auth_code(port: int, login: str, secret: str) -> int:
    """The reply code to AUTH PLAIN."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        try:
            return client.login(login, secret)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
        except smtplib.SMTPException as exc:
            return int(str(exc.args[0])) if str(exc.args[0]).isdigit() else 0


def mail_from_code(port: int, login: tuple[str, str], sender: str) -> int:
    """MAIL FROM's reply code after authenticating."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.login(*login)
        return client.mail(sender)[0]


def send(port: int, rcpts: list[str]) -> None:
    """One message from <> to `rcpts`, all accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.sendmail("", rcpts, b"Subject: hi\r\n\r\nhello\r\n")
