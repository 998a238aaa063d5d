"""directory_ldap against a real slapd, through real SMTP sessions: recipient verification,
directory aliases in rewrite, sender ownership, AUTH by binding, and a dead directory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mailgate.app import App
from tests.directory.conftest import auth_code, mail_from_code, rcpt_codes, rcpt_reply, send
from tests.peers.slapd import Slapd
from tests.peers.smtp_sink import SmtpSink


def ldap_toml(server: Slapd, extra: str = "") -> str:
    return f'url = "{server.url}"\nbase = "{server.suffix}"\nlookup_timeout = 2\n{extra}'


async def test_recipients_aliases_senders_and_auth(
    slapd: Slapd, start_gate: Callable[..., Any], smtp_sink: SmtpSink
) -> None:
    app: App = await start_gate("directory_ldap", ldap_toml(slapd))
    port = app.ports[0]
    codes = await asyncio.to_thread(
        rcpt_codes,
        port,
        ["alice@example.org", "alice+news@example.org", "nobody@example.org", "x@example.net"],
        ("alice", "alicepw"),
    )
    assert codes == [250, 250, 550, 250]  # example.net: the catch-all applies first
    code, text = await asyncio.to_thread(rcpt_reply, port, "nobody@example.org")
    assert (code, text[:5]) == (550, b"5.1.1")

    await asyncio.to_thread(send, port, ["postmaster@example.org"])
    (tx,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert sorted(tx.rcpts) == ["alice@example.org", "bob@example.org"]  # the LDAP list

    assert await asyncio.to_thread(auth_code, port, "alice", "alicepw") == 235
    assert await asyncio.to_thread(auth_code, port, "alice", "wrong") == 535
    assert await asyncio.to_thread(auth_code, port, "alice", "") in (535, 501)
    assert await asyncio.to_thread(auth_code, port, "nosuchuser", "x") == 535
    login = ("alice", "alicepw")
    assert await asyncio.to_thread(mail_from_code, port, login, "sales@example.org") == 250
    assert await asyncio.to_thread(mail_from_code, port, login, "alice+x@example.org") == 250
    assert await asyncio.to_thread(mail_from_code, port, login, "bob@example.org") == 553


async def test_a_dead_directory_tempfails_by_default(
    own_slapd: Slapd, start_gate: Callable[..., Any]
) -> None:
    app: App = await start_gate("directory_ldap", ldap_toml(own_slapd))
    port = app.ports[0]
    assert await asyncio.to_thread(rcpt_codes, port, ["bob@example.org"]) == [250]
    own_slapd.stop()
    code, text = await asyncio.to_thread(rcpt_reply, port, "carol@example.org")
    assert (code, text[:5]) == (451, b"4.3.0")
    # cached answers still serve while the directory is down
    assert await asyncio.to_thread(rcpt_codes, port, ["bob@example.org"]) == [250]
    assert await asyncio.to_thread(auth_code, port, "bob", "bobpw") == 454
    own_slapd.start()
    assert await asyncio.to_thread(auth_code, port, "bob", "bobpw") == 235


async def test_on_error_accept_lets_recipients_through(
    own_slapd: Slapd, start_gate: Callable[..., Any]
) -> None:
    app: App = await start_gate("directory_ldap", ldap_toml(own_slapd, 'on_error = "accept"\n'))
    own_slapd.stop()
    assert await asyncio.to_thread(rcpt_codes, app.ports[0], ["carol@example.org"]) == [250]
