"""contrib/postfix/replace-opendkim-opendmarc.md, run as written.

A real Postfix gets the recipe's main.cf lines; ``mailgate serve`` gets the recipe's
mailgate.toml and conf.d files (only paths and the test DNS differ), with an opendkim-genkey key
as the migrated opendkim key. Then:

- mail from an internal client leaves signed with that key (selector ``mail``): dkimpy verifies
  it, and so does a real opendkim, as a milter of Postfix;
- mail from outside, DKIM-signed by its sender and carrying a forged Authentication-Results in
  our name, arrives with exactly one Authentication-Results (ours) saying spf, dkim, dmarc pass;
- unsigned mail from outside that fails SPF, for a domain that publishes p=reject, is refused
  550 5.7.1 by DMARC, and nothing is delivered.
"""

from __future__ import annotations

import grp
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from tests.peers.dns import DnsServer
from tests.peers.opendkim import DkimKey, OpenDkimFactory, make_key
from tests.peers.postfix import DeliveredMessage, Postfix, PostfixFactory
from tests.peers.process import Daemon, start_daemon
from tests.peers.workdir import PeerDirs
from tests.recipes import recipe_block as read_recipe_block

RECIPE = Path(__file__).parents[1] / "contrib" / "postfix" / "replace-opendkim-opendmarc.md"
MAILGATE = Path(sys.executable).parent / "mailgate"
KEY_FILE = "/etc/opendkim/keys/example.com/mail.private"
SPOOL = "/var/spool/postfix"
AUTHSERV_ID = "mx.example.com"
INSIDE_SPF = "198.51.100.7"  # in sender.example.net's SPF record
OUTSIDE = "203.0.113.9"  # in nobody's


def recipe_block(name: str) -> str:
    """The code block after ``<!-- recipe: NAME -->`` in the recipe."""
    return read_recipe_block(RECIPE, name)


def recipe_main_cf() -> dict[str, str]:
    """The recipe's main.cf parameters."""
    params = {}
    for line in recipe_block("main.cf").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            params[name.strip()] = value.strip()
    return params


@dataclass(frozen=True, slots=True)
class Keys:
    """Our migrated opendkim key, and the key of an outside sender."""

    ours: DkimKey
    sender: DkimKey


def zones(keys: Keys) -> list[str]:
    """example.com (ours), sender.example.net (signs its mail), both with p=reject."""
    return [
        "$ORIGIN example.com.\n$TTL 300\n"
        '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
        '_dmarc IN TXT "v=DMARC1; p=reject"\n' + keys.ours.zone_line() + "\n",
        "$ORIGIN sender.example.net.\n$TTL 300\n"
        f'@ IN TXT "v=spf1 ip4:{INSIDE_SPF} -all"\n'
        '_dmarc IN TXT "v=DMARC1; p=reject"\n' + keys.sender.zone_line() + "\n",
    ]


@pytest.fixture(scope="module")
def keys(peer_dirs: PeerDirs) -> Keys:
    directory = peer_dirs.new("recipe-keys")
    return Keys(
        make_key(directory, "example.com", "mail"), make_key(directory, "sender.example.net", "ext")
    )


@pytest.fixture(scope="module")
def recipe_dns(keys: Keys) -> Iterator[DnsServer]:
    server = DnsServer().start()
    for zone in zones(keys):
        server.add_zone(zone)
    yield server
    server.stop()


def _unix_probe(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


@dataclass
class Site:
    """Postfix with the recipe's main.cf, mailgate with the recipe's files, and a second
    smtpd whose milter is a real opendkim verifier (to check outgoing signatures)."""

    postfix: Postfix
    verify_port: int
    mailgate: Daemon

    def swaks(self, port: int, *args: str, data: bytes | None = None) -> tuple[int, str]:
        argv = ["swaks", "--server", f"127.0.0.1:{port}", "--timeout", "20", *args]
        if data is not None:
            argv += ["--data", "-"]
        done = subprocess.run(argv, input=data, capture_output=True, timeout=60)
        return done.returncode, done.stdout.decode(errors="replace")

    def delivered_to(self, rcpt: str, count: int = 1) -> list[DeliveredMessage]:
        found = self.postfix.wait_for_delivered(count)
        return [m for m in found if m.delivered_to == rcpt]


@pytest.fixture
def site(
    peer_dirs: PeerDirs,
    postfix_factory: PostfixFactory,
    opendkim_factory: OpenDkimFactory,
    recipe_dns: DnsServer,
    keys: Keys,
) -> Iterator[Site]:
    verifier = opendkim_factory("v", key=keys.ours, dns=recipe_dns)
    postfix = postfix_factory(main_cf=recipe_main_cf(), start=False)
    verify_port = postfix.add_listener([verifier.milter])
    spool = str(postfix.spool)
    # What the recipe's install -d does: mailgate's directory, set-group-ID postfix.
    socket_dir = postfix.spool / "mailgate"
    socket_dir.mkdir()
    shutil.chown(socket_dir, "root", "postfix")
    socket_dir.chmod(0o2750)
    conf = peer_dirs.new("recipe-conf")
    (conf / "mailgate.toml").write_text(
        recipe_block("mailgate.toml").replace(SPOOL, spool)
        + f'\n[dns]\nnameservers = ["{recipe_dns.host}:{recipe_dns.port}"]\ntimeout = 2.0\n'
        + '[logging]\nlevel = "info"\n'
    )
    for name in ("80-spf.toml", "85-dkim.toml", "87-arc.toml", "90-dmarc.toml"):
        text = recipe_block(name).replace(KEY_FILE, str(keys.ours.private_key))
        (conf / name).write_text(text)
    check = subprocess.run(
        [str(MAILGATE), "check-config", "--config", str(conf)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    sock = socket_dir / "milter.sock"
    mailgate = start_daemon(
        "mailgate-recipe",
        [str(MAILGATE), "serve", "--config", str(conf)],
        workdir=conf,
        probe=lambda: _unix_probe(sock),
        grace=3.0,
    )
    try:
        assert sock.stat().st_gid == grp.getgrnam("postfix").gr_gid  # smtpd may connect
        postfix.start()
        yield Site(postfix, verify_port, mailgate)
    finally:
        mailgate.stop()


def crlf(data: bytes) -> bytes:
    """LF line ends (as Postfix stores mail) to CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dns_lookup(server: DnsServer) -> Callable[..., bytes]:
    """dkimpy's ``dnsfunc``, answered by the test DNS."""
    resolver = server.resolver()

    def txt(name: bytes, timeout: float = 5) -> bytes:
        answer = resolver.resolve(name.decode(), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return txt


def test_outgoing_mail_is_signed_with_the_opendkim_key(site: Site, recipe_dns: DnsServer) -> None:
    code, out = site.swaks(
        site.postfix.port,
        "--from",
        "alice@example.com",
        "--to",
        "bob@local.test",
        "--header",
        "Subject: signed by mailgate with opendkim's key",
    )
    assert code == 0, out
    [delivered] = site.delivered_to("bob@local.test")
    data = crlf(delivered.data)
    # Postfix's local delivery put Return-Path and Delivered-To above; the signature is next.
    signature = delivered.message["DKIM-Signature"]
    assert signature is not None, delivered.data.decode()
    tags = dict(part.strip().split("=", 1) for part in signature.split(";") if "=" in part)
    assert (tags["d"], tags["s"], tags["a"]) == ("example.com", "mail", "rsa-sha256")
    assert dkim.verify(data, dnsfunc=dns_lookup(recipe_dns))
    assert not dkim.verify(
        data.replace(b"opendkim's key", b"someone's key"), dnsfunc=dns_lookup(recipe_dns)
    )
    # Internal mail is not judged by DMARC (skip_networks), but still reported.
    assert delivered.message["Authentication-Results"].startswith(f"{AUTHSERV_ID};")

    # The real opendkim, as Postfix's milter, verifies the same bytes.
    delivered.path.unlink()
    code, out = site.swaks(
        site.verify_port, "--from", "alice@example.com", "--to", "carol@local.test", data=data
    )
    assert code == 0, out
    [checked] = site.delivered_to("carol@local.test")
    said = [
        " ".join(v.split())
        for v in checked.message.get_all("Authentication-Results", [])
        if v.strip().startswith("mx.pf.test")
    ]
    assert any(re.search(r"dkim=pass .*header\.d=example\.com.*header\.s=mail", v) for v in said), (
        said
    )


def signed_by_sender(keys: Keys, forged: bool = True) -> bytes:
    """Mail from x@sender.example.net, DKIM-signed by its domain, with a forged
    Authentication-Results in our name above the signature."""
    message = (
        b"From: Xavier <x@sender.example.net>\r\nTo: <bob@local.test>\r\n"
        b"Subject: hello from outside\r\nDate: Fri, 04 Dec 2026 12:00:00 +0000\r\n"
        b"Message-ID: <out-1@sender.example.net>\r\n\r\nHello Bob.\r\n"
    )
    signature: bytes = dkim.sign(
        message,
        b"ext",
        b"sender.example.net",
        keys.sender.private_key.read_bytes(),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    forgery = f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=example.com\r\n"
    return (forgery.encode() if forged else b"") + signature + message


def test_incoming_mail_gets_one_authentication_results(site: Site, keys: Keys) -> None:
    code, out = site.swaks(
        site.postfix.port,
        "--xclient-addr",
        INSIDE_SPF,
        "--from",
        "x@sender.example.net",
        "--to",
        "bob@local.test",
        data=signed_by_sender(keys),
    )
    assert code == 0, out
    [delivered] = site.delivered_to("bob@local.test")
    results = delivered.message.get_all("Authentication-Results")
    assert results is not None and len(results) == 1, results  # the forged one is gone
    value = " ".join(results[0].split())
    assert value.startswith(f"{AUTHSERV_ID}; ")
    assert re.search(r"spf=pass [^;]*smtp\.mailfrom=sender\.example\.net", value), value
    assert re.search(r"dkim=pass [^;]*header\.d=sender\.example\.net", value), value
    assert "arc=none" in value
    assert re.search(r"dmarc=pass [^;]*header\.from=sender\.example\.net", value), value
    assert "header.d=example.com" not in value
    # Our header is the first one; nobody signed mail from outside with our key.
    local = (b"Return-Path:", b"X-Original-To:", b"Delivered-To:")  # Postfix's delivery
    first = next(line for line in delivered.data.split(b"\n") if not line.startswith(local))
    assert first.startswith(b"Authentication-Results: mx.example.com;")
    assert b"d=example.com" not in delivered.data
    assert delivered.message["Received-SPF"].startswith("Pass")


def test_a_dmarc_reject_failure_is_refused_550_5_7_1(site: Site) -> None:
    code, out = site.swaks(
        site.postfix.port,
        "--xclient-addr",
        OUTSIDE,
        "--from",
        "x@sender.example.net",
        "--to",
        "bob@local.test",
        "--header",
        "From: <x@sender.example.net>",
    )
    assert code != 0
    assert re.search(r"<\*\* +550 5\.7\.1 .*DMARC policy of sender\.example\.net", out), out
    log = site.postfix.maillog()
    assert re.search(r"milter-reject: END-OF-MESSAGE from \S*\[203\.0\.113\.9\]: 5\.7\.1 ", log), (
        log
    )
    assert site.postfix.delivered() == []
