"""TLS as an auditor expects it: TLS 1.0 and 1.1 refused, a cipher list, the certificate read again
on SIGHUP, and held messages private to mailgate's user (issue 9, item 7). Tested with
``openssl s_client`` against a real ``mailgate serve`` configuration (`App`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.quarantine import QuarantineStore
from mailgate.session import Address, Session, Transaction
from tests.peers.certificate import self_signed_certificate
from tests.relay.helpers import message


def s_client(port: int, *options: str) -> subprocess.CompletedProcess[str]:
    """``openssl s_client -starttls smtp`` to mailgate; the client allows every protocol, so
    what is refused is refused by the server."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
         "-cipher", "DEFAULT:@SECLEVEL=0", *options],
        input="QUIT\n",
        capture_output=True,
        text=True,
        timeout=20,
    )  # fmt: skip


@pytest.fixture
async def tls_gate(tmp_path: Path) -> AsyncIterator[tuple[App, Path]]:
    live = tmp_path / "live"
    live.mkdir()
    cert, key = self_signed_certificate(live, "first.mailgate.test")
    (tmp_path / "mailgate.toml").write_text(
        f'[[listener]]\naddress = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    app = App(tmp_path, relay="127.0.0.1:9", configure_logs=False)
    await app.start()
    yield app, live
    await app.stop()


@pytest.mark.parametrize(
    ("option", "accepted"),
    [("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)],
)
async def test_only_tls_1_2_and_later_are_accepted(
    tls_gate: tuple[App, Path], option: str, accepted: bool
) -> None:
    app, _ = tls_gate
    result = await asyncio.to_thread(s_client, app.ports[0], option)
    handshake = "Cipher is (NONE)" not in result.stdout and "BEGIN CERTIFICATE" in result.stdout
    assert handshake is accepted, result.stdout[-600:] + result.stderr[-600:]


async def test_a_renewed_certificate_is_served_after_sighup(tls_gate: tuple[App, Path]) -> None:
    app, live = tls_gate
    before = await asyncio.to_thread(s_client, app.ports[0])
    assert "CN = first.mailgate.test" in before.stdout
    renewed = live.parent / "renewed"
    renewed.mkdir()
    self_signed_certificate(renewed, "second.mailgate.test")
    for name in ("cert.pem", "key.pem"):
        shutil.copy(renewed / name, live / name)
    assert app.reload()
    after = await asyncio.to_thread(s_client, app.ports[0])
    assert "CN = second.mailgate.test" in after.stdout


async def test_a_certificate_that_no_longer_loads_keeps_the_old_one(
    tls_gate: tuple[App, Path],
) -> None:
    app, live = tls_gate
    (live / "cert.pem").write_text("not a certificate")
    app.reload()  # refused by the configuration check, or the listener keeps its context
    result = await asyncio.to_thread(s_client, app.ports[0])
    assert "CN = first.mailgate.test" in result.stdout


def test_a_cipher_list_that_selects_nothing_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[[listener]]\ntls_ciphers = "NO-SUCH-CIPHER"\n')
    with pytest.raises(ConfigError, match="tls_ciphers"):
        load_config(tmp_path)


async def test_held_messages_are_private_to_mailgates_user(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "quarantine")
    tx = Transaction(Address("a@example.com"), [Address("b@example.net")])
    tx.message = message()
    held = await store.store(Session("192.0.2.1"), tx, "test")
    for path in (held.message_path, held.sidecar_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(tmp_path / "quarantine").st_mode) == 0o700
