"""The spf plugin against a real DNS server: results, replies, the Received-SPF header, and
end to end through the SMTP listener to smtp-sink and through the milter listener behind Postfix.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import spf
from dns.nameserver import Do53Nameserver

from mailgate import Address, Session, Transaction, Verdict, VerdictKind
from mailgate.app import App
from mailgate.config import ConfigError, load_settings
from mailgate.dns import DnsSettings
from mailgate.loader import load_config
from mailgate.modifications import AddHeader
from mailgate.plugins import spf as spf_plugin
from mailgate.plugins.spf import Spf, SpfSettings
from tests.milter.gate import app_behind_postfix
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs
from tests.plugins import messages

ZONE = """\
$ORIGIN spf.test.
$TTL 300
pass      IN TXT "v=spf1 ip4:127.0.0.1 -all"
fail      IN TXT "v=spf1 ip4:192.0.2.1 -all"
explained IN TXT "v=spf1 -all exp=why.spf.test"
why       IN TXT "%{i} is not a mail server of %{d}"
soft      IN TXT "v=spf1 ~all"
neutral   IN TXT "v=spf1 ?all"
none      IN A   192.0.2.10
two       IN TXT "v=spf1 ip4:127.0.0.1 -all"
two       IN TXT "v=spf1 -all"
bad       IN TXT "v=spf1 ip4:nonsense -all"
include   IN TXT "v=spf1 include:pass.spf.test -all"
redirect  IN TXT "v=spf1 redirect=fail.spf.test"
helo      IN TXT "v=spf1 ip4:127.0.0.1 -all"
badhelo   IN TXT "v=spf1 -all"
"""


def nameserver(server: DnsServer) -> str:
    """The ``[dns] nameservers`` entry for `server`."""
    return f"{server.host}:{server.port}"


@pytest.fixture
def zone(dns_server: DnsServer) -> DnsServer:
    """The DNS server with the spf.test zone."""
    dns_server.add_zone(ZONE)
    return dns_server


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """A name server that reads queries and never answers: every lookup times out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def plugin(server: str, timeout: float = 2.0, **settings: object) -> Spf:
    """The plugin as a conf.d file would configure it (no skipped networks unless given)."""
    table = {"skip_networks": [], "receiver": "gate.example", **settings}
    loaded = load_settings(SpfSettings, table, source="80-spf.toml")
    return Spf(loaded, dns=DnsSettings(nameservers=[server], timeout=timeout))


async def mail(
    p: Spf, sender: str, *, ip: str = "127.0.0.1", helo: str = "client.example", login: str = ""
) -> tuple[Verdict | None, Transaction]:
    """Run `on_mail` for `sender` from `ip`; the verdict and the transaction."""
    session = Session(ip, 40000, helo=helo, auth_login=login)
    tx = Transaction(Address(sender))
    verdict = await p.on_mail(session, tx, tx.sender)
    return verdict, tx


@pytest.mark.parametrize(
    ("sender", "result"),
    [
        ("alice@pass.spf.test", "pass"),
        ("alice@fail.spf.test", "fail"),
        ("alice@soft.spf.test", "softfail"),
        ("alice@neutral.spf.test", "neutral"),
        ("alice@none.spf.test", "none"),
        ("alice@nowhere.spf.test", "none"),
        ("alice@two.spf.test", "permerror"),
        ("alice@bad.spf.test", "permerror"),
        ("alice@include.spf.test", "pass"),
        ("alice@redirect.spf.test", "fail"),
    ],
)
async def test_results(zone: DnsServer, sender: str, result: str) -> None:
    verdict, tx = await mail(plugin(nameserver(zone), reject=[], tempfail=[]), sender)
    assert verdict is None
    found = tx.results["spf"]
    assert found.result == result
    domain = sender.partition("@")[2]
    assert found.details["identity"] == "mailfrom"
    assert found.details["domain"] == domain
    assert found.details["auth_method"] == "spf"
    assert found.details["auth_properties"] == {"smtp.mailfrom": domain}


async def test_lookups_go_to_the_configured_server(zone: DnsServer) -> None:
    await mail(plugin(nameserver(zone)), "alice@include.spf.test")
    asked = {(q.name, q.rdtype) for q in zone.queries}
    assert {("include.spf.test.", "TXT"), ("pass.spf.test.", "TXT")} <= asked


async def test_fail_is_refused_with_5_7_23(zone: DnsServer) -> None:
    verdict, _ = await mail(plugin(nameserver(zone)), "alice@fail.spf.test")
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert (verdict.code, verdict.status) == (550, "5.7.23")
    assert verdict.text == "SPF fail for fail.spf.test: SPF fail - not authorized"


async def test_the_domain_explanation_is_the_reply_text(zone: DnsServer) -> None:
    verdict, _ = await mail(plugin(nameserver(zone)), "alice@explained.spf.test")
    assert verdict is not None
    assert verdict.text == "SPF fail for explained.spf.test: 127.0.0.1 is not a mail server of " + (
        "explained.spf.test"
    )


async def test_permerror_in_reject_uses_5_7_24(zone: DnsServer) -> None:
    verdict, _ = await mail(plugin(nameserver(zone), reject=["permerror"]), "a@two.spf.test")
    assert verdict is not None and (verdict.code, verdict.status) == (550, "5.7.24")


async def test_silent_server_is_temperror_and_tempfails_with_4_7_24(silent_dns: str) -> None:
    verdict, tx = await mail(plugin(silent_dns, timeout=0.5), "alice@pass.spf.test")
    assert tx.results["spf"].result == "temperror"
    assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL
    assert (verdict.code, verdict.status) == (451, "4.7.24")


async def test_temperror_is_accepted_when_tempfail_is_empty(silent_dns: str) -> None:
    verdict, tx = await mail(plugin(silent_dns, timeout=0.5, tempfail=[]), "alice@pass.spf.test")
    assert verdict is None and tx.results["spf"].result == "temperror"


async def test_check_timeout_bounds_the_whole_check(silent_dns: str) -> None:
    p = plugin(silent_dns, timeout=5.0, check_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, tx = await mail(p, "alice@pass.spf.test")
    assert tx.results["spf"].result == "temperror"
    assert loop.time() - started < 2.0


async def test_null_sender_checks_the_helo_identity(zone: DnsServer) -> None:
    p = plugin(nameserver(zone))
    verdict, tx = await mail(p, "", helo="helo.spf.test")
    found = tx.results["spf"]
    assert verdict is None and found.result == "pass"
    assert found.details["identity"] == "helo"
    assert found.details["auth_properties"] == {"smtp.helo": "helo.spf.test"}
    verdict, tx = await mail(p, "", helo="badhelo.spf.test")
    assert verdict is not None and verdict.status == "5.7.23"
    assert tx.results["spf"].result == "fail"


async def test_null_sender_without_helo_is_none(zone: DnsServer) -> None:
    verdict, tx = await mail(plugin(nameserver(zone)), "", helo="")
    assert verdict is None and tx.results["spf"].result == "none"


async def test_authenticated_sessions_are_not_checked(zone: DnsServer) -> None:
    verdict, tx = await mail(plugin(nameserver(zone)), "alice@fail.spf.test", login="alice")
    assert verdict is None
    assert tx.results["spf"].result == "skipped"
    assert zone.queries == []


async def test_skip_networks_default_skips_localhost(zone: DnsServer) -> None:
    p = Spf(SpfSettings(), dns=DnsSettings(nameservers=[nameserver(zone)]))
    for ip in ("127.0.0.1", "::1"):
        verdict, tx = await mail(p, "alice@fail.spf.test", ip=ip)
        assert verdict is None and tx.results["spf"].reason == "skip_networks"
    verdict, _ = await mail(p, "alice@fail.spf.test", ip="192.0.2.55")
    assert verdict is not None and verdict.code == 550


async def test_received_spf_header(zone: DnsServer) -> None:
    p = plugin(nameserver(zone))
    _, tx = await mail(p, "alice@soft.spf.test")
    tx.message = messages.make_message(messages.ham())
    p.on_message(tx)
    assert tx.modifications == [
        AddHeader(
            "Received-SPF",
            "SoftFail (gate.example: transitioning domain of soft.spf.test does not designate "
            "127.0.0.1 as permitted sender) client-ip=127.0.0.1;"
            ' envelope-from="alice@soft.spf.test"; helo=client.example; receiver=gate.example;'
            " mechanism=~all; identity=mailfrom",
        )
    ]


async def test_no_header_when_header_is_false(zone: DnsServer) -> None:
    p = plugin(nameserver(zone), header=False)
    _, tx = await mail(p, "alice@pass.spf.test")
    tx.message = messages.make_message(messages.ham())
    p.on_message(tx)
    assert tx.modifications == []


async def test_the_resolver_is_set_only_inside_the_check(zone: DnsServer) -> None:
    """The check's thread has its own context: the caller's stays without a resolver, so
    pyspf used elsewhere in the process keeps its own lookups."""
    _, tx = await mail(plugin(nameserver(zone)), "alice@pass.spf.test")
    assert tx.results["spf"].result == "pass"
    assert spf_plugin._resolver.get(None) is None
    assert spf.DNSLookup is spf_plugin._lookup


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('reject = ["failed"]\n', "reject[0]"),
        ('tempfail = ["later"]\n', "tempfail[0]"),
        ('reject = ["fail"]\ntempfail = ["fail"]\n', "tempfail"),
        ('skip_networks = ["nonsense"]\n', "skip_networks"),
        ("check_timeout = 0\n", "check_timeout"),
    ],
)
def test_bad_settings_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "80-spf.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / '80-spf.toml'}: {key}:")


def test_bad_nameserver_names_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[dns]\nnameservers = ["ns.example"]\n')
    (tmp_path / "80-spf.toml").write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'mailgate.toml'}: dns.nameservers:")


def test_the_loader_hands_the_dns_table_to_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[dns]\nnameservers = ["192.0.2.53:5353"]\n')
    (tmp_path / "80-spf.toml").write_text("")
    enabled = load_config(tmp_path).pipeline().plugins[-1]
    assert enabled.name == "spf"
    assert isinstance(enabled.instance, Spf)
    resolver = enabled.instance.resolver
    servers = [(n.address, n.port) for n in resolver.nameservers if isinstance(n, Do53Nameserver)]
    assert servers == [("192.0.2.53", 5353)]


def test_shipped_conf_d_file_is_disabled_and_valid(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent.parent / "conf.d" / "80-spf.toml"
    text = shipped.read_text()
    (tmp_path / "80-spf.toml").write_text(text)
    assert load_config(tmp_path).disabled == [("spf", str(tmp_path / "80-spf.toml"))]
    (tmp_path / "80-spf.toml").write_text(text.replace("enabled = false", "enabled = true"))
    assert [p.name for p in load_config(tmp_path).pipeline().plugins][-1] == "spf"


# -- end to end: SMTP client -> mailgate -> smtp-sink --------------------------------------------


@pytest.fixture
async def gate(tmp_path: Path, zone: DnsServer, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    """mailgate with spf enabled by conf.d files, its DNS the test server, relaying to smtp-sink."""
    (tmp_path / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{nameserver(zone)}"]\ntimeout = 2.0\n'
    )
    (tmp_path / "80-spf.toml").write_text('skip_networks = []\nreceiver = "gate.example"\n')
    app = App(
        tmp_path,
        listen="127.0.0.1:0",
        relay=f"{smtp_sink.host}:{smtp_sink.port}",
        configure_logs=False,
    )
    await app.start()
    yield app
    await app.stop()


def send(port: int, sender: str, helo: str = "client.example") -> tuple[int, bytes]:
    """One message from `sender`: the MAIL FROM reply if refused, else the end-of-data reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo(helo)
        code, text = client.mail(sender)
        if code != 250:
            return code, text
        assert client.rcpt("bob@example.org")[0] == 250
        return client.data(b"From: a@example.org\r\nSubject: spf\r\n\r\nhello\r\n")


async def test_smtp_pass_is_delivered_with_the_header(gate: App, smtp_sink: SmtpSink) -> None:
    code, _ = await asyncio.to_thread(send, gate.ports[0], "alice@pass.spf.test")
    assert code == 250
    [got] = smtp_sink.wait_for_messages(1)
    header = got.header("Received-SPF")
    assert header is not None and header.startswith("Pass (gate.example: domain of pass.spf.test")


async def test_smtp_fail_is_refused_at_mail(gate: App, smtp_sink: SmtpSink) -> None:
    code, text = await asyncio.to_thread(send, gate.ports[0], "alice@fail.spf.test")
    assert (code, text) == (550, b"5.7.23 SPF fail for fail.spf.test: SPF fail - not authorized")
    await asyncio.sleep(0.3)
    assert smtp_sink.messages() == []


async def test_smtp_softfail_is_accepted_and_says_so(gate: App, smtp_sink: SmtpSink) -> None:
    code, _ = await asyncio.to_thread(send, gate.ports[0], "alice@soft.spf.test")
    assert code == 250
    [got] = smtp_sink.wait_for_messages(1)
    header = got.header("Received-SPF")
    assert header is not None and header.startswith("SoftFail ")


async def test_smtp_null_sender_uses_helo(gate: App, smtp_sink: SmtpSink) -> None:
    code, text = await asyncio.to_thread(send, gate.ports[0], "", "badhelo.spf.test")
    assert code == 550 and text.startswith(b"5.7.23 SPF fail for badhelo.spf.test")
    code, _ = await asyncio.to_thread(send, gate.ports[0], "", "helo.spf.test")
    assert code == 250
    [got] = smtp_sink.wait_for_messages(1)
    assert "identity=helo" in (got.header("Received-SPF") or "")


async def test_smtp_temperror_is_451(tmp_path: Path, silent_dns: str, smtp_sink: SmtpSink) -> None:
    (tmp_path / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{silent_dns}"]\ntimeout = 0.5\n'
    )
    (tmp_path / "80-spf.toml").write_text("skip_networks = []\n")
    relay = f"{smtp_sink.host}:{smtp_sink.port}"
    app = App(tmp_path, listen="127.0.0.1:0", relay=relay, configure_logs=False)
    await app.start()
    try:
        code, text = await asyncio.to_thread(send, app.ports[0], "alice@pass.spf.test")
    finally:
        await app.stop()
    assert code == 451 and text.startswith(b"4.7.24 SPF temperror for pass.spf.test")


# -- through the milter listener: Postfix with XCLIENT presents an outside client ----------------


def test_postfix_refuses_an_spf_fail_with_our_reply(zone: DnsServer, peer_dirs: PeerDirs) -> None:
    conf = peer_dirs.new("conf")
    (conf / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{nameserver(zone)}"]\n'
        '[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:0"\n'
    )
    (conf / "80-spf.toml").write_text('receiver = "gate.example"\n')  # default skip_networks
    with app_behind_postfix(Path(conf), peer_dirs.new("postfix")) as (_, postfix, port):

        def swaks(sender: str, addr: str) -> str:
            argv = ["swaks", "--server", f"127.0.0.1:{port}", "--from", sender]
            argv += ["--to", "bob@local.test", "--xclient-addr", addr, "--timeout", "20"]
            return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout

        out = swaks("alice@fail.spf.test", "192.0.2.55")
        assert "550 5.7.23 SPF fail for fail.spf.test: SPF fail - not authorized" in out
        out = swaks("alice@fail.spf.test", "192.0.2.1")  # the one address fail.spf.test allows
        assert "Ok: queued" in out or " queued as " in out, out
        [delivered] = postfix.wait_for_delivered(1)
        assert (
            b"Received-SPF: Pass (gate.example: domain of fail.spf.test designates 192.0.2.1"
            in (delivered.data)
        )
