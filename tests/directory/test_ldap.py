"""directory_ldap against a real slapd, through real SMTP sessions: recipient verification,
directory aliases in rewrite, sender ownership, AUTH by binding, and a dead directory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from mailgate.app import App
from mailgate.config import ConfigError, load_settings
from mailgate.directory import Question
from mailgate.plugins.directory.ldap import DirectoryLdap, DirectoryLdapSettings
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


def ldap_plugin(server: Slapd, **settings: object) -> DirectoryLdap:
    table = {"url": server.url, "base": server.suffix, "lookup_timeout": 2, **settings}
    return DirectoryLdap(load_settings(DirectoryLdapSettings, table, source="05-ldap.toml"))


async def test_a_lookup_is_not_held_up_by_a_busy_connection(slapd: Slapd) -> None:
    """With two search connections, a lookup runs while the other connection is busy (one
    shared connection made every miss wait for the one before)."""
    plugin = ldap_plugin(slapd, connections=2)
    held, release = threading.Event(), threading.Event()

    def busy() -> None:
        with plugin.pool.connection(2):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=busy)
    holder.start()
    try:
        assert held.wait(5)
        entry = await asyncio.wait_for(
            plugin.fetch(Question.RECIPIENT, "postmaster@example.org"), 2
        )
        assert entry.found and entry.addresses == ("alice@example.org", "bob@example.org")
    finally:
        release.set()
        holder.join(5)
        await plugin.stop()
    assert plugin.pool.opened == 2


async def test_many_lookups_at_once_share_at_most_the_configured_connections(
    slapd: Slapd,
) -> None:
    plugin = ldap_plugin(slapd, connections=3)
    subjects = [f"nobody{i}@example.org" for i in range(20)] + ["bob@example.org"]
    try:
        for _ in range(2):
            entries = await asyncio.gather(*(plugin.fetch(Question.RECIPIENT, s) for s in subjects))
            assert [e.found for e in entries] == [False] * 20 + [True]
    finally:
        await plugin.stop()
    assert 1 <= plugin.pool.opened <= 3


async def test_a_search_after_the_server_restarted_opens_a_new_connection(
    own_slapd: Slapd,
) -> None:
    plugin = ldap_plugin(own_slapd, connections=1)
    try:
        assert (await plugin.fetch(Question.RECIPIENT, "bob@example.org")).found
        own_slapd.stop()
        own_slapd.start()  # the pooled connection is dead now
        assert (await plugin.fetch(Question.RECIPIENT, "alice@example.org")).found
    finally:
        await plugin.stop()
    assert plugin.pool.opened == 2


@pytest.mark.parametrize("value", [0, 65])
def test_connections_out_of_range_names_the_key(slapd: Slapd, value: int) -> None:
    with pytest.raises(ConfigError) as info:
        ldap_plugin(slapd, connections=value)
    assert "connections" in str(info.value)
