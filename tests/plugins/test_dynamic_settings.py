"""Per-transaction plugin settings through real SMTP sessions: clamav's action (real clamd),
spf's actions (the test DNS), rewrite's maps and catch-all, the milter bridge's failure policy
and timeouts; each key changing with the transaction."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailgate import Address, Session, Transaction, VerdictKind
from mailgate.app import App
from mailgate.config import load_settings
from mailgate.milter import codec as c
from mailgate.plugins.milter import MilterPlugin, MilterSettings
from tests.peers.clamd import Clamd
from tests.peers.dns import DnsServer
from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink
from tests.plugins import messages as m
from tests.plugins.milter.fake_milter import HANG, FakeMilter, plain
from tests.plugins.test_spf import ZONE, nameserver

Gate = Callable[[dict[str, str]], Awaitable[App]]


@pytest.fixture
def make_gate(tmp_path: Path, smtp_sink: SmtpSink) -> Gate:
    """Start mailgate with the given conf.d files, relaying to smtp-sink."""

    async def start(files: dict[str, str]) -> App:
        (tmp_path / "mailgate.toml").write_text(files.pop("mailgate.toml", ""))
        for name, text in files.items():
            (tmp_path / name).write_text(text)
        app = App(
            tmp_path,
            listen="127.0.0.1:0",
            relay=f"{smtp_sink.host}:{smtp_sink.port}",
            configure_logs=False,
        )
        await app.start()
        return app

    return start


def send(
    port: int, sender: str, rcpts: list[str], data: bytes, helo: str = "client.example"
) -> tuple[int, bytes]:
    """One message: the first refusal (MAIL, every RCPT) or the end-of-data reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo(helo)
        code, text = client.mail(sender)
        if code != 250:
            return code, text
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text
        return client.data(data)


async def test_clamav_action_follows_the_recipients(
    make_gate: Gate, clamd: Clamd, smtp_sink: SmtpSink
) -> None:
    app = await make_gate(
        {
            "50-clamav.toml": f'servers = ["{clamd.unix_address}"]\n'
            'action = [{ if = \'rcpts.all(r, r.domain == "lab.example")\', then = "tag" }, '
            '{ else = "reject" }]\n'
        }
    )
    try:
        port = app.ports[0]
        code, text = await asyncio.to_thread(send, port, "a@x.example", ["v@lab.example"], EICAR)
        assert code == 250, text
        mixed = ["v@lab.example", "w@example.org"]
        code, text = await asyncio.to_thread(send, port, "a@x.example", mixed, EICAR)
        assert code == 554 and text.startswith(b"5.7.1 Virus found: Eicar-Test-Signature")
        (got,) = smtp_sink.wait_for_messages(1)
        assert got.rcpts == ("v@lab.example",)
        assert (got.header("X-Virus-Status") or "").startswith("Infected (Eicar-Test-Signature")
    finally:
        await app.stop()


EICAR = m.eicar_inline()


async def test_spf_actions_follow_the_helo_name(
    make_gate: Gate, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    dns_server.add_zone(ZONE)
    app = await make_gate(
        {
            "mailgate.toml": f'[dns]\nnameservers = ["{nameserver(dns_server)}"]\n',
            "80-spf.toml": "skip_networks = []\n"
            'reject = [{ if = \'helo == "strict.example"\', then = ["fail", "softfail"] }, '
            '{ else = ["fail"] }]\n',
        }
    )
    try:
        port, data = app.ports[0], b"Subject: spf\r\n\r\nhi\r\n"
        soft, rcpt = "alice@soft.spf.test", ["bob@example.org"]
        code, text = await asyncio.to_thread(send, port, soft, rcpt, data, "strict.example")
        assert code == 550 and text.startswith(b"5.7.23 SPF softfail for soft.spf.test")
        code, _ = await asyncio.to_thread(send, port, soft, rcpt, data, "relaxed.example")
        assert code == 250
        code, _ = await asyncio.to_thread(send, port, "a@fail.spf.test", rcpt, data, "x.example")
        assert code == 550
        assert [g.mail_from for g in smtp_sink.wait_for_messages(1)] == [soft]
    finally:
        await app.stop()


REWRITE = """\
recipients = [
    { if = 'sender.domain == "partner.example"', then = { "sales@example.org" = "desk@x.org" } },
    { else = { "sales@example.org" = "team@example.org" } },
]
catch_all = [
    { if = 'rcpt.local.startsWith("test-")', then = {} },
    { else = { "@example.org" = "postmaster@example.org" } },
]
known_recipients = ["team@example.org", "postmaster@example.org"]
"""


async def test_rewrite_maps_and_catch_all_follow_the_transaction(
    make_gate: Gate, smtp_sink: SmtpSink
) -> None:
    app = await make_gate({"70-rewrite.toml": REWRITE})
    try:
        port, data = app.ports[0], b"Subject: rewrite\r\n\r\nhi\r\n"
        rcpts = ["sales@example.org", "nobody@example.org", "test-1@example.org"]
        for sender in ("a@partner.example", "a@other.example"):
            code, _ = await asyncio.to_thread(send, port, sender, rcpts, data)
            assert code == 250
        got = {g.mail_from: sorted(g.rcpts) for g in smtp_sink.wait_for_messages(2)}
        kept = ["postmaster@example.org", "test-1@example.org"]
        assert got == {
            "a@partner.example": ["desk@x.org", *kept],
            "a@other.example": [kept[0], "team@example.org", kept[1]],
        }
    finally:
        await app.stop()


async def test_milter_failure_policy_follows_the_sender(
    make_gate: Gate, smtp_sink: SmtpSink
) -> None:
    app = await make_gate(
        {
            "40-milter.toml": f'address = "inet:127.0.0.1:{free_port()}"\n'
            'stages = ["mail", "rcpt", "message"]\nconnect_timeout = 1.0\n'
            'on_failure = [{ if = \'sender.domain == "critical.example"\', then = "tempfail" }, '
            '{ else = "skip" }]\n'
        }
    )
    try:
        port, data = app.ports[0], b"Subject: milter\r\n\r\nhi\r\n"
        code, text = await asyncio.to_thread(send, port, "a@critical.example", ["b@x.test"], data)
        assert (code, text) == (451, b"4.7.1 Service unavailable - try again later")
        code, _ = await asyncio.to_thread(send, port, "a@casual.example", ["b@x.test"], data)
        assert code == 250
        assert [g.mail_from for g in smtp_sink.wait_for_messages(1)] == ["a@casual.example"]
    finally:
        await app.stop()


async def test_milter_command_timeout_follows_the_client() -> None:
    hung = await FakeMilter().start()
    hung.script = lambda f: HANG if isinstance(f, c.Mail) else plain(f)
    try:
        table = {
            "address": hung.address,
            "on_failure": "tempfail",
            "command_timeout": [
                {"if": 'ip_in(client.ip, ["192.0.2.0/24"])', "then": 0.2},
                {"else": 1.5},
            ],
        }
        plugin = MilterPlugin(load_settings(MilterSettings, table, source="40-milter.toml"))
        waited = {}
        for ip in ("192.0.2.1", "198.51.100.1"):
            session = Session(ip)
            tx = Transaction(Address("a@example.com"), [])
            started = time.monotonic()
            verdict = await plugin.on_mail(session, tx)
            waited[ip] = time.monotonic() - started
            assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL
            await plugin.on_disconnect(session)
        assert waited["192.0.2.1"] < 1.0 <= waited["198.51.100.1"]
    finally:
        await hung.stop()
