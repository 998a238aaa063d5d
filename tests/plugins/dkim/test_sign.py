"""The dkim plugin signing: which mail, which keys, which headers; its signatures checked by
dkimpy and by opendkim, also after a real Postfix and through the milter listener."""

from __future__ import annotations

import asyncio
import re
import smtplib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from mailgate import Address, Session, Transaction, hookimpl
from mailgate.app import App
from mailgate.config import load_settings
from mailgate.modifications import InsertHeader
from mailgate.plugins.dkim import Dkim, DkimSettings
from tests.milter.gate import app_behind_postfix, open_gate
from tests.peers.dns import DnsServer
from tests.peers.opendkim import OpenDkimFactory
from tests.peers.postfix import PostfixFactory
from tests.peers.workdir import PeerDirs
from tests.plugins import messages
from tests.plugins.dkim.conftest import DOMAIN, Keys, Relay, dns_settings, opendkim_signer

MESSAGE = (
    f"From: Alice <alice@{DOMAIN}>\r\nTo: bob@local.test\r\nSubject: sign me\r\n"
    "Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <s1@dkim.example.com>\r\n"
    "\r\nHello Bob,\r\n\r\nsigned by mailgate.\r\n"
).encode()


def key_table(keys: Keys, *, domain: str = DOMAIN) -> dict[str, Any]:
    """``keys`` as conf.d would hold it: the RSA and the Ed25519 key of `domain`."""
    return {
        domain: [
            {"selector": "rsa1", "key_file": str(keys.rsa.private_key)},
            {"selector": "ed1", "key_file": str(keys.ed25519.private_key)},
        ]
    }


def plugin(server: DnsServer, keys: Keys, **settings: Any) -> Dkim:
    table = {"keys": key_table(keys), **settings}
    loaded = load_settings(DkimSettings, table, source="85-dkim.toml")
    return Dkim(loaded, dns=dns_settings(server))


async def run(
    p: Dkim, data: bytes, *, ip: str = "192.0.2.1", login: str = "alice"
) -> tuple[Transaction, bytes]:
    """`on_message`; the transaction and the message as it would leave."""
    tx = Transaction(Address(f"alice@{DOMAIN}"))
    tx.message = messages.make_message(data)
    session = Session(ip, 40000, helo="client.example", auth_login=login)
    await p.on_message(session, tx, tx.message)
    return tx, b"".join(tx.message.iter_bytes())


def dkimpy_verifies(server: DnsServer, data: bytes, count: int) -> list[bool]:
    """dkimpy's verdict on each of the first `count` signatures, keys from `server`."""
    resolver = server.resolver()

    def txt(name: bytes, timeout: float = 5) -> bytes:
        return b"".join(resolver.resolve(name.decode(), "TXT")[0].strings)

    return [dkim.DKIM(data).verify(idx, dnsfunc=txt) for idx in range(count)]


def tags(data: bytes, idx: int = 0) -> dict[bytes, bytes]:
    value = messages.make_message(data).get_all("DKIM-Signature")[idx]
    return dict(dkim.util.parse_tag_value(value.encode()))


async def test_rsa_and_ed25519_signatures_verify_with_dkimpy(
    dkim_dns: DnsServer, keys: Keys
) -> None:
    tx, out = await run(plugin(dkim_dns, keys), MESSAGE)
    assert [type(m) for m in tx.modifications] == [InsertHeader, InsertHeader]
    assert dkimpy_verifies(dkim_dns, out, 2) == [True, True]
    rsa, ed = tags(out, 0), tags(out, 1)
    assert (rsa[b"s"], rsa[b"a"], rsa[b"d"]) == (b"rsa1", b"rsa-sha256", b"dkim.example.com")
    assert (ed[b"s"], ed[b"a"]) == (b"ed1", b"ed25519-sha256")
    assert rsa[b"c"] == b"relaxed/relaxed"
    assert tx.notes["dkim.signed"] == [
        {"d": DOMAIN, "s": "rsa1", "a": "rsa-sha256"},
        {"d": DOMAIN, "s": "ed1", "a": "ed25519-sha256"},
    ]


async def test_from_subject_to_date_are_over_signed(dkim_dns: DnsServer, keys: Keys) -> None:
    _, out = await run(plugin(dkim_dns, keys), MESSAGE)
    h = [n.strip() for n in tags(out)[b"h"].decode().split(":")]
    assert h == [
        "from", "from", "reply-to", "subject", "subject", "date", "date",
        "to", "to", "cc", "message-id",
    ]  # fmt: skip
    added = out.replace(b"Subject: sign me", b"Subject: sign me\r\nCc: eve@example.org")
    assert dkimpy_verifies(dkim_dns, added, 1) == [False]


async def test_only_mail_chosen_by_sign_when_is_signed(dkim_dns: DnsServer, keys: Keys) -> None:
    p = plugin(dkim_dns, keys)
    tx, _ = await run(p, MESSAGE, login="")
    assert tx.modifications == []
    tx, _ = await run(p, MESSAGE, ip="127.0.0.1", login="")
    assert len(tx.modifications) == 2
    p = plugin(dkim_dns, keys, sign_when='ip_in(client.ip, ["192.0.2.0/24"])')
    tx, _ = await run(p, MESSAGE, login="")
    assert len(tx.modifications) == 2


async def test_a_subdomain_is_signed_with_its_parent_keys(dkim_dns: DnsServer, keys: Keys) -> None:
    data = MESSAGE.replace(b"alice@dkim.example.com", b"alice@news.dkim.example.com")
    _, out = await run(plugin(dkim_dns, keys), data)
    assert tags(out)[b"d"] == b"dkim.example.com"
    assert dkimpy_verifies(dkim_dns, out, 2) == [True, True]


async def test_a_domain_without_keys_is_not_signed(dkim_dns: DnsServer, keys: Keys) -> None:
    tx, _ = await run(
        plugin(dkim_dns, keys), MESSAGE.replace(b"dkim.example.com>", b"example.org>")
    )
    assert tx.modifications == []


async def test_simple_canonicalization(dkim_dns: DnsServer, keys: Keys) -> None:
    _, out = await run(plugin(dkim_dns, keys, canonicalization="simple/simple"), MESSAGE)
    assert tags(out)[b"c"] == b"simple/simple"
    assert dkimpy_verifies(dkim_dns, out, 2) == [True, True]


async def test_signing_leaves_verification_of_incoming_signatures_alone(
    dkim_dns: DnsServer,
    keys: Keys,
    opendkim_factory: OpenDkimFactory,
    through_milter: Relay,
) -> None:
    incoming = through_milter(opendkim_signer(opendkim_factory, keys.opendkim), MESSAGE)
    tx, out = await run(plugin(dkim_dns, keys), incoming)
    [entry] = tx.results["dkim"].details["auth_results"]
    assert (entry["result"], entry["properties"]["header.s"]) == ("pass", "od1")
    assert dkimpy_verifies(dkim_dns, out, 3) == [True, True, True]


async def test_verification_sees_the_headers_as_they_arrived(
    dkim_dns: DnsServer, keys: Keys, opendkim_factory: OpenDkimFactory, through_milter: Relay
) -> None:
    """A plugin before dkim tags the Subject: the incoming signature still passes (it is
    checked against the header block as it arrived), and mailgate's covers the new one."""
    incoming = through_milter(opendkim_signer(opendkim_factory, keys.opendkim), MESSAGE)
    p = plugin(dkim_dns, keys)
    tx = Transaction(Address(f"alice@{DOMAIN}"))
    tx.message = messages.make_message(incoming)
    tx.change_header("Subject", "[EXTERNAL] sign me")
    await p.on_message(Session("127.0.0.1", 4000), tx, tx.message)
    assert tx.results["dkim"].result == "pass"
    out = b"".join(tx.message.iter_bytes())
    assert dkimpy_verifies(dkim_dns, out, 3) == [True, True, False]


# -- opendkim as the verifier ---------------------------------------------------------------------


def opendkim_says(through_milter: Relay, verifier: str, data: bytes) -> list[str]:
    """opendkim's Authentication-Results for `data`, one ``dkim=...`` clause per signature."""
    verified = through_milter(verifier, data)
    header = messages.make_message(verified).get("Authentication-Results") or ""
    clauses = [" ".join(c.split()) for c in re.split(r";\s*(?=dkim=)", header)]
    return [c for c in clauses if c.startswith("dkim=")]


async def test_opendkim_verifies_mailgate_signatures(
    dkim_dns: DnsServer, keys: Keys, opendkim_dkim_test: str, through_milter: Relay
) -> None:
    """opendkim 2.11 verifies the RSA signature; the Ed25519 one it verifies too (this
    build links an OpenSSL with Ed25519)."""
    for canonicalization in ("relaxed/relaxed", "simple/simple"):
        _, out = await run(plugin(dkim_dns, keys, canonicalization=canonicalization), MESSAGE)
        said = await asyncio.to_thread(opendkim_says, through_milter, opendkim_dkim_test, out)
        assert any(c.startswith("dkim=pass") and "header.s=rsa1" in c for c in said), said
        assert any(c.startswith("dkim=pass") and "header.s=ed1" in c for c in said), said


async def test_opendkim_signs_with_a_keygen_key(
    dkim_dns: DnsServer, keys: Keys, opendkim_factory: OpenDkimFactory, through_milter: Relay
) -> None:
    """The PEM that ``mailgate dkim keygen`` writes is a key opendkim can use."""
    signer = opendkim_signer(opendkim_factory, keys.rsa)
    data = await asyncio.to_thread(through_milter, signer, MESSAGE)
    p = plugin(dkim_dns, keys)
    tx, _ = await run(p, data, login="")
    assert tx.results["dkim"].result == "pass"


# -- end to end: client -> mailgate (SMTP listener) -> Postfix + opendkim verifier -> Maildir --


@pytest.fixture
async def gate_to_postfix(
    tmp_path: Path,
    dkim_dns: DnsServer,
    keys: Keys,
    opendkim_dkim_test: str,
    postfix_factory: PostfixFactory,
) -> AsyncIterator[tuple[App, Any]]:
    """mailgate signing (conf.d files) in front of a Postfix whose smtpd runs opendkim."""
    postfix = postfix_factory(start=False)
    port = postfix.add_listener([opendkim_dkim_test])
    postfix.start()
    (tmp_path / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{dkim_dns.host}:{dkim_dns.port}"]\ntimeout = 2.0\n'
    )
    (tmp_path / "85-dkim.toml").write_text(
        f'[[keys."{DOMAIN}"]]\nselector = "rsa1"\nkey_file = "{keys.rsa.private_key}"\n'
        f'[[keys."{DOMAIN}"]]\nselector = "ed1"\nkey_file = "{keys.ed25519.private_key}"\n'
    )
    app = App(tmp_path, listen="127.0.0.1:0", relay=f"127.0.0.1:{port}", configure_logs=False)
    await app.start()
    yield app, postfix
    await app.stop()


def send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(f"alice@{DOMAIN}", ["bob@local.test"], data)


async def test_signed_by_mailgate_passes_opendkim_behind_postfix(
    gate_to_postfix: tuple[App, Any], dkim_dns: DnsServer
) -> None:
    app, postfix = gate_to_postfix
    await asyncio.to_thread(send, app.ports[0], MESSAGE)
    [delivered] = await asyncio.to_thread(postfix.wait_for_delivered, 1)
    header = delivered.message.get("Authentication-Results") or ""
    assert "dkim=pass" in header and "header.s=rsa1" in header, header
    data = delivered.data.replace(b"\n", b"\r\n")
    count = data.count(b"\r\nDKIM-Signature:") + data.startswith(b"DKIM-Signature:")
    assert count == 2
    assert dkimpy_verifies(dkim_dns, data, 2) == [True, True]


# -- through the milter listener: Postfix -> mailgate (milter) signs -> Maildir ----------------


def test_signed_through_the_milter_listener(
    dkim_dns: DnsServer,
    keys: Keys,
    peer_dirs: PeerDirs,
    opendkim_dkim_test: str,
    through_milter: Relay,
) -> None:
    conf = peer_dirs.new("conf")
    (conf / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{dkim_dns.host}:{dkim_dns.port}"]\n'
        '[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:0"\n'
    )
    (conf / "85-dkim.toml").write_text(
        f'[[keys."{DOMAIN}"]]\nselector = "rsa1"\nkey_file = "{keys.rsa.private_key}"\n'
        f'[[keys."{DOMAIN}"]]\nselector = "ed1"\nkey_file = "{keys.ed25519.private_key}"\n'
    )
    with app_behind_postfix(Path(conf), peer_dirs.new("postfix")) as (_, postfix, port):
        argv = ["swaks", "--server", f"127.0.0.1:{port}", "--from", f"alice@{DOMAIN}"]
        argv += ["--to", "bob@local.test", "--timeout", "20", "--data", "-"]
        done = subprocess.run(argv, input=MESSAGE, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout
        [delivered] = postfix.wait_for_delivered(1)
    data = delivered.data.replace(b"\n", b"\r\n")
    assert dkimpy_verifies(dkim_dns, data, 2) == [True, True]
    said = opendkim_says(through_milter, opendkim_dkim_test, data)
    assert sum(c.startswith("dkim=pass") for c in said) == 2, said


# -- mailgate dkim keygen ------------------------------------------------------------------------

KEYGEN = [sys.executable, "-m", "mailgate.cli", "dkim", "keygen"]


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_text("old")
    done = subprocess.run(
        [*KEYGEN, "-d", "example.org", "-s", "s1", "-o", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr == f"mailgate: {path} exists; not overwritten\n"
    assert path.read_text() == "old"


def test_keygen_refuses_short_rsa_keys(tmp_path: Path) -> None:
    argv = [*KEYGEN, "-d", "example.org", "-s", "s1", "--bits", "512", "-o", str(tmp_path / "k")]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 1
    assert "RFC 8301" in done.stderr
    assert not (tmp_path / "k").exists()


def test_keygen_writes_a_private_file_and_prints_the_record(tmp_path: Path) -> None:
    path = tmp_path / "k"
    argv = [*KEYGEN, "-d", "Example.ORG", "-s", "2026", "-a", "ed25519", "-o", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert path.stat().st_mode & 0o777 == 0o600
    last = done.stdout.splitlines()[-1]
    assert last.startswith('2026._domainkey.example.org. IN TXT ( "v=DKIM1; k=ed25519; p=')


@pytest.mark.parametrize("protocol", [6, 2])
def test_milter_protocol_versions_both_carry_the_signatures(
    dkim_dns: DnsServer, keys: Keys, peer_dirs: PeerDirs, protocol: int
) -> None:
    """The signature goes back to Postfix as an insert-header action, with milter protocol 6
    and with the old protocol 2."""
    with open_gate(peer_dirs.new("postfix"), [("dkim", "inet:127.0.0.1:0")]) as gate:
        gate.chain.use(plugin(dkim_dns, keys))
        [route] = [r for r in gate.routes if r.protocol == protocol]
        sent = gate.send(route, sender=f"alice@{DOMAIN}")
        assert sent.returncode == 0, sent.output
        [delivered] = gate.delivered(sent)
    data = delivered.data.replace(b"\n", b"\r\n")
    assert data.count(b"DKIM-Signature:") == 2
    assert dkimpy_verifies(dkim_dns, data, 2) == [True, True]


class ResultHeader:
    """Writes the dkim result into a header, so a test can read it from the delivered mail."""

    reads: frozenset[str] = frozenset()

    @hookimpl
    def on_message(self, transaction: Transaction) -> None:
        found = transaction.results["dkim"]
        selectors = [e["properties"]["header.s"] for e in found.details["auth_results"]]
        transaction.add_header("X-Dkim-Result", f"{found.result} {','.join(selectors)}")


def test_incoming_signatures_verify_on_the_milter_listener(
    dkim_dns: DnsServer,
    keys: Keys,
    peer_dirs: PeerDirs,
    opendkim_factory: OpenDkimFactory,
    through_milter: Relay,
) -> None:
    """Postfix hands the headers and body to mailgate's milter listener as they arrived: an
    opendkim signature passes there, and one broken in transit fails."""
    signed = through_milter(opendkim_signer(opendkim_factory, keys.opendkim), MESSAGE)
    with open_gate(peer_dirs.new("postfix"), [("dkim", "inet:127.0.0.1:0")]) as gate:
        gate.chain.use(plugin(dkim_dns, keys, sign_when="false"), ResultHeader())
        route = gate.routes[0]
        for data, expected in [(signed, b"pass od1"), (signed.replace(b"Bob", b"Eve"), b"fail")]:
            argv = ["swaks", "--server", f"127.0.0.1:{route.port}", "--from", f"alice@{DOMAIN}"]
            argv += ["--to", "bob@local.test", "--timeout", "20", "--data", "-"]
            done = subprocess.run(argv, input=data, capture_output=True, timeout=60)
            assert done.returncode == 0, done.stdout
            [delivered] = gate.postfix.wait_for_delivered(1)
            delivered.path.unlink()
            assert b"X-Dkim-Result: " + expected in delivered.data
