"""The `srs` plugin: the SRS0/SRS1 codec (postsrsd's vectors and properties), its settings, the
hooks, and SRS end to end: against a real postsrsd (same secret, each side reversing the
other's addresses), through the SMTP listener to smtp-sink, and behind Postfix as its milter."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailgate import Address, Session, Transaction, VerdictKind
from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.expressions import Expression
from mailgate.loader import load_config
from mailgate.plugins.rewrite.lookup import xtext
from mailgate.plugins.srs import Srs, SrsCodec, SrsError, SrsSettings, is_srs
from mailgate.plugins.srs.codec import DAY, timestamp, timestamp_age
from tests.milter.gate import Chain, Gate, LoopThread, Route, start_listener
from tests.peers.ports import free_port
from tests.peers.postfix import Postfix
from tests.peers.process import Daemon, connect_probe, start_daemon
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs

CONF_D = Path(__file__).resolve().parents[2] / "conf.d"

SECRET = "tops3cret"
DAY_311 = (20480 + 311) * DAY + 3600.0
"""2026-12-04, day 311 modulo 1024: the timestamp ``JX``."""

POSTSRSD_VECTORS = [
    ("alice@orig.example", "SRS0=qT3O=JX=orig.example=alice@fwd.example"),
    ("Alice.B+x=y@Orig.Example", "SRS0=skM3=JX=Orig.Example=Alice.B+x=y@fwd.example"),
    (
        "SRS0=abcd=AB=orig.example=alice@other.example",
        "SRS1=GU5S=other.example==abcd=AB=orig.example=alice@fwd.example",
    ),
    (
        "SRS1=abcd=first.example==HHHH=TT=d=l@other.example",
        "SRS1=EYBB=first.example==HHHH=TT=d=l@fwd.example",
    ),
    (
        "SRS0+abcd=AB=orig.example=alice@other.example",
        "SRS1=cnRl=other.example=+abcd=AB=orig.example=alice@fwd.example",
    ),
    ("bob@fwd.example", "bob@fwd.example"),
]
"""What postsrsd 1.10 (Debian bookworm) answered on day 311 for secret ``tops3cret`` and
``-d fwd.example``: facts for a regression test that needs no daemon."""


def codec(domain: str = "fwd.example", *secrets: str, **options: int) -> SrsCodec:
    return SrsCodec(secrets or (SECRET,), domain, **options)  # type: ignore[arg-type]


# -- the codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("original", "forwarded"), POSTSRSD_VECTORS)
def test_forward_gives_what_postsrsd_gives(original: str, forwarded: str) -> None:
    assert codec().forward(original, DAY_311) == forwarded


@pytest.mark.parametrize(("original", "forwarded"), POSTSRSD_VECTORS[:5])
def test_reverse_undoes_one_forward(original: str, forwarded: str) -> None:
    back = codec().reverse(forwarded, DAY_311)
    if is_srs(original.partition("@")[0]):
        # An SRS1 goes back to the SRS0 address at the first forwarder, not to its source.
        assert back.startswith("SRS0") and back.lower().endswith(
            ("@other.example", "@first.example")
        )
    else:
        assert back == original


def test_timestamp_is_days_modulo_1024_in_base32() -> None:
    assert timestamp(DAY_311) == "JX"
    assert timestamp(0) == "AA"
    assert timestamp(1023 * DAY) == "77"
    assert timestamp_age("jx", DAY_311 + 5 * DAY) == 5
    assert timestamp_age("JX", DAY_311 - DAY) == 1023  # the future wraps to very old
    with pytest.raises(SrsError):
        timestamp_age("J1", DAY_311)


def test_hash_compare_ignores_case_and_the_address_case() -> None:
    forwarded = codec().forward("alice@orig.example", DAY_311)
    assert codec().reverse(forwarded.lower(), DAY_311) == "alice@orig.example"
    assert codec().reverse(forwarded.upper(), DAY_311) == "ALICE@ORIG.EXAMPLE"


def test_key_rotation_first_secret_signs_every_secret_verifies() -> None:
    old = codec("fwd.example", "old-secret")
    rotated = codec("fwd.example", "new-secret", "old-secret")
    signed_old = old.forward("a@b.example", DAY_311)
    signed_new = rotated.forward("a@b.example", DAY_311)
    assert signed_new != signed_old
    assert signed_new == codec("fwd.example", "new-secret").forward("a@b.example", DAY_311)
    assert rotated.reverse(signed_old, DAY_311) == "a@b.example"
    assert rotated.reverse(signed_new, DAY_311) == "a@b.example"
    with pytest.raises(SrsError, match="hash"):
        codec("fwd.example", "new-secret").reverse(signed_old, DAY_311)


def test_shorter_hashes_down_to_hash_min() -> None:
    short = codec().forward("a@b.example", DAY_311)
    longer = codec(hash_length=6, hash_min=4)
    assert longer.forward("a@b.example", DAY_311).startswith(short[:9])  # same HMAC, 6 letters
    assert longer.reverse(short, DAY_311) == "a@b.example"
    with pytest.raises(SrsError, match="length"):
        codec(hash_length=6, hash_min=5).reverse(short, DAY_311)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("bob@fwd.example", "not an SRS address"),
        ("SRS0=qT3O=JX=orig.example@fwd.example", "malformed"),
        ("SRS0=qT3O=JX==alice@fwd.example", "malformed"),
        ("SRS0=qT3O=J=orig.example=alice@fwd.example", "bad timestamp"),
        ("SRS0=qT3O=JX=orig.example=alicf@fwd.example", "hash does not match"),
        ("SRS0==JX=orig.example=alice@fwd.example", "malformed"),
        ("SRS1=GU5S=other.example@fwd.example", "malformed"),
        ("SRS1=GU5T=other.example==abcd=AB=orig.example=alice@fwd.example", "hash"),
    ],
)
def test_invalid_addresses_are_refused(address: str, reason: str) -> None:
    with pytest.raises(SrsError, match=reason):
        codec().reverse(address, DAY_311)


def test_bad_codec_settings() -> None:
    with pytest.raises(ValueError, match="secret"):
        SrsCodec((), "fwd.example")
    with pytest.raises(ValueError, match="secret"):
        SrsCodec(("",), "fwd.example")
    with pytest.raises(ValueError, match="separator"):
        SrsCodec((SECRET,), "fwd.example", separator="x")
    with pytest.raises(ValueError, match="hash_length"):
        SrsCodec((SECRET,), "fwd.example", hash_min=5)


# -- properties --------------------------------------------------------------------------------

senders = st.emails().filter(lambda a: not a.lower().endswith("@fwd.example"))
nows = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(address=senders, now=nows, days=st.integers(0, 21))
def test_forward_then_reverse_gives_back_the_address(address: str, now: float, days: int) -> None:
    assume(not is_srs(address.rpartition("@")[0]))
    forwarded = codec().forward(address, now)
    assert forwarded.endswith("@fwd.example")
    assert codec().reverse(forwarded, now + days * DAY) == address


@given(address=senders, now=nows)
def test_two_forwarders_give_srs1_which_goes_back_hop_by_hop(address: str, now: float) -> None:
    assume(not is_srs(address.rpartition("@")[0]))
    first, second = codec("a.example", "secret-a"), codec("b.example", "secret-b")
    srs0 = first.forward(address, now)
    srs1 = second.forward(srs0, now)
    assert srs1.startswith("SRS1=") and srs1.endswith("@b.example")
    assert codec("c.example", "secret-c").forward(srs1, now).startswith("SRS1=")
    assert second.reverse(srs1, now) == srs0
    assert first.reverse(srs0, now) == address


@given(address=senders, now=nows, position=st.integers(0, 3), letter=st.sampled_from("AbZ09+/"))
def test_a_tampered_hash_is_refused(address: str, now: float, position: int, letter: str) -> None:
    assume(not is_srs(address.rpartition("@")[0]))
    forwarded = codec().forward(address, now)
    digest = forwarded[5:9]
    assume(digest[position].lower() != letter.lower())
    tampered = forwarded[: 5 + position] + letter + forwarded[6 + position :]
    with pytest.raises(SrsError):
        codec().reverse(tampered, now)


@given(address=senders, now=nows, days=st.integers(22, 1023))
def test_an_old_timestamp_is_refused(address: str, now: float, days: int) -> None:
    assume(not is_srs(address.rpartition("@")[0]))
    forwarded = codec().forward(address, now)
    with pytest.raises(SrsError, match="expired"):
        codec().reverse(forwarded, now + days * DAY)


@given(text=st.text(max_size=120))
def test_reverse_never_raises_anything_but_srs_error(text: str) -> None:
    with contextlib.suppress(SrsError):
        codec().reverse(text, DAY_311)


# -- settings ----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "75-srs.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('secrets = ["x"]', "domain"),
        ('domain = "fwd.example"', "(file)"),
        ('domain = "not a domain"\nsecrets = ["x"]', "domain"),
        ('domain = "fwd.example"\nsecrets = [""]', "secrets"),
        ('domain = "fwd.example"\nsecrets = ["x"]\nseparator = "_"', "separator"),
        ('domain = "fwd.example"\nsecrets = ["x"]\nhash_length = 40', "hash_length"),
        ('domain = "fwd.example"\nsecrets = ["x"]\nhash_min_length = 5', "hash_min_length"),
        ('domain = "fwd.example"\nsecrets = ["x"]\nmax_age_days = 0', "max_age_days"),
        ('domain = "fwd.example"\nsecrets_file = "/nonexistent/secret"', "secrets_file"),
        ('domain = "fwd.example"\nsecrets = ["x"]\nforward_when = "nosuch"', "forward_when"),
        ('domain = "fwd.example"\nsecrets = ["x"]\nlocal_domains = ["@x"]', "local_domains[0]"),
    ],
)
def test_bad_settings_stop_loading_with_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.file.endswith("75-srs.toml")
    assert caught.value.key == key


def test_secrets_file_follows_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("file-one\n\nfile two \n")
    settings = SrsSettings("fwd.example", secrets=["inline"], secrets_file=path)
    assert tuple(settings.srs.secrets) == ("inline", "file-one", "file two ")


def test_shipped_file_is_disabled_and_loads_when_enabled(tmp_path: Path) -> None:
    text = (CONF_D / "75-srs.toml").read_text()
    assert "srs" not in {p.name for p in load_config(write(tmp_path, text)).chain}
    enabled = text.replace("enabled = false", "enabled = true", 1)
    pipeline = load_config(write(tmp_path, enabled)).pipeline()
    (plugin,) = [p for p in pipeline.plugins if p.name == "srs"]
    assert isinstance(plugin.instance, Srs)
    assert plugin.instance.codec.domain == "srs.example.com"


# -- hooks, without a network ------------------------------------------------------------------


def plugin(**settings: object) -> Srs:
    options: dict[str, object] = {"secrets": [SECRET]} | settings
    return Srs(SrsSettings("fwd.example", **options), clock=lambda: DAY_311)  # type: ignore[arg-type]


def test_rcpt_reverses_and_refuses() -> None:
    srs = plugin()
    tx = Transaction(Address(""))
    assert srs.on_rcpt(tx, Address(POSTSRSD_VECTORS[0][1], ["NOTIFY=NEVER"])) is None
    assert [(r.address, r.params) for r in tx.recipients] == [
        ("alice@orig.example", ["NOTIFY=NEVER", f"ORCPT=rfc822;{xtext(POSTSRSD_VECTORS[0][1])}"])
    ]
    assert tx.notes["srs"]["recipients"] == {POSTSRSD_VECTORS[0][1]: "alice@orig.example"}
    for bad in (
        "SRS0=xxxx=JX=orig.example=alice@FWD.example",
        "srs0=qT3O=AA=orig.example=alice@fwd.example",
    ):
        verdict = srs.on_rcpt(tx, Address(bad))
        assert verdict is not None and verdict.kind is VerdictKind.REJECT
        assert (verdict.code, verdict.status) == (550, "5.1.1")
    assert srs.on_rcpt(tx, Address("postmaster@fwd.example")) is None  # not SRS: not ours
    assert srs.on_rcpt(tx, Address("SRS0=xxxx=JX=a.example=b@elsewhere.example")) is None
    assert plugin(reverse=False).on_rcpt(tx, Address(POSTSRSD_VECTORS[0][1])) is None


@pytest.mark.parametrize(
    ("sender", "rcpts", "settings", "rewritten"),
    [
        ("alice@orig.example", ["bob@remote.example"], {}, True),
        ("alice@orig.example", ["ann@example.com"], {"local_domains": ["example.com"]}, False),
        (
            "alice@orig.example",
            ["ann@example.com", "bob@remote.example"],
            {"local_domains": ["example.com"]},
            True,
        ),
        (
            "ann@example.com",
            ["bob@remote.example"],
            {"exclude_sender_domains": ["example.com"]},
            False,
        ),
        ("", ["bob@remote.example"], {}, False),
        ("x@fwd.example", ["bob@remote.example"], {}, False),
        ("alice@orig.example", ["bob@remote.example"], {"forward": False}, False),
        (
            "alice@orig.example",
            ["bob@remote.example"],
            {"forward_when": 'listener == "inbound"'},
            False,
        ),
    ],
)
def test_end_of_data_forwards_only_mail_that_leaves(
    sender: str, rcpts: list[str], settings: dict[str, object], rewritten: bool
) -> None:
    if "forward_when" in settings:
        settings["forward_when"] = Expression(str(settings["forward_when"]))
    srs = plugin(**settings)
    tx = Transaction(Address(sender, ["SIZE=10"]), [Address(r) for r in rcpts])
    srs.on_message(Session("192.0.2.1"), tx)
    if rewritten:
        assert tx.sender.address == codec().forward(sender, DAY_311)
        assert tx.sender.params == ["SIZE=10"]
        assert tx.notes["srs"]["sender"] == [sender, tx.sender.address]
    else:
        assert tx.sender.address == sender


# -- a real postsrsd ---------------------------------------------------------------------------


@dataclass
class Postsrsd:
    """postsrsd 1.x: Postfix tcp_table lookups, forward and reverse on their own ports."""

    daemon: Daemon
    forward_port: int
    reverse_port: int

    def ask(self, port: int, address: str) -> tuple[int, str]:
        """``get <address>`` on `port`: the code (200, 500) and the text."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"get {address}\n".encode())
            reply = sock.makefile("rb").readline().decode().strip()
        code, _, text = reply.partition(" ")
        return int(code), text

    def forward(self, address: str) -> str:
        code, text = self.ask(self.forward_port, address)
        assert code == 200, text
        return text

    def reverse(self, address: str) -> tuple[int, str]:
        return self.ask(self.reverse_port, address)


@pytest.fixture(scope="module")
def postsrsd(peer_dirs: PeerDirs) -> Iterator[Postsrsd]:
    """postsrsd for ``fwd.example``, secrets ``new-secret`` (signs) and ``tops3cret``."""
    workdir = peer_dirs.new("postsrsd")
    secrets = workdir / "secrets"
    secrets.write_text(f"new-secret\n{SECRET}\n")
    forward, reverse = free_port(), free_port()
    argv = ["postsrsd", f"-s{secrets}", "-dfwd.example", "-l127.0.0.1", "-4"]
    argv += [f"-f{forward}", f"-r{reverse}"]
    daemon = start_daemon(
        "postsrsd", argv, workdir=workdir, probe=connect_probe("127.0.0.1", reverse)
    )
    yield Postsrsd(daemon, forward, reverse)
    daemon.stop()


def test_postsrsd_and_mailgate_reverse_each_others_addresses(postsrsd: Postsrsd) -> None:
    ours = SrsCodec(("new-secret", SECRET), "fwd.example")
    now = time.time()
    for address in ("alice@orig.example", "Mixed.Case+tag=x@Sub.Orig.Example", "a_b-c@x.example"):
        theirs = postsrsd.forward(address)
        assert theirs == ours.forward(address, now)  # same secret, same day: same address
        assert ours.reverse(theirs, now) == address
        assert postsrsd.reverse(ours.forward(address, now)) == (200, address)
        srs0 = codec("first.example", "first-secret").forward(address, now)
        srs1 = postsrsd.forward(srs0)
        assert srs1 == ours.forward(srs0, now)
        assert ours.reverse(srs1, now) == srs0
        assert postsrsd.reverse(ours.forward(srs0, now)) == (200, srs0)
        # An SRS address our own secrets verify is not wrapped again, by either.
        assert postsrsd.ask(postsrsd.forward_port, theirs) == (500, "Already rewritten")
    # Signed with the second (old) secret: both accept it.
    old = SrsCodec((SECRET,), "fwd.example").forward("bob@orig.example", now)
    assert postsrsd.reverse(old) == (200, "bob@orig.example")
    assert ours.reverse(old, now) == "bob@orig.example"
    # Refused by both: a tampered hash, an expired timestamp.
    tampered = old[:5] + ("A" if old[5] != "A" else "B") + old[6:]
    assert postsrsd.reverse(tampered)[0] == 500
    with pytest.raises(SrsError):
        ours.reverse(tampered, now)
    expired = ours.forward("bob@orig.example", now - 30 * DAY)
    assert postsrsd.reverse(expired)[0] == 500
    with pytest.raises(SrsError, match="expired"):
        ours.reverse(expired, now)


# -- end to end: the SMTP listener relaying to smtp-sink ---------------------------------------

CONF = f"""
domain = "fwd.example"
secrets = ["new-secret", "{SECRET}"]
local_domains = ["example.com"]
exclude_sender_domains = ["example.com"]
"""


@pytest.fixture
async def smtp_gate(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    """mailgate with the srs plugin, relaying to smtp-sink."""
    write(tmp_path, CONF)
    host, port = smtp_sink.address
    app = App(tmp_path, listen="127.0.0.1:0", relay=f"{host}:{port}", configure_logs=False)
    await app.start()
    yield app
    await app.stop()


def transaction(port: int, sender: str, rcpts: list[str]) -> list[tuple[int, bytes]]:
    """MAIL, each RCPT and (if some RCPT was accepted) DATA: every reply."""
    replies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        replies.append(client.mail(sender))
        for rcpt in rcpts:
            replies.append(client.rcpt(rcpt))
        if any(code == 250 for code, _ in replies[1:]):
            replies.append(client.data(b"Subject: hi\r\n\r\nhello\r\n"))
    return replies


async def test_smtp_forwarded_sender_is_srs_and_postsrsd_reverses_it(
    smtp_gate: App, smtp_sink: SmtpSink, postsrsd: Postsrsd
) -> None:
    port = smtp_gate.ports[0]
    replies = await asyncio.to_thread(
        transaction, port, "alice@orig.example", ["bob@remote.example"]
    )
    assert [code for code, _ in replies] == [250, 250, 250]
    (tx,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert tx.mail_from.startswith("SRS0=") and tx.mail_from.endswith("@fwd.example")
    assert postsrsd.reverse(tx.mail_from) == (200, "alice@orig.example")


async def test_smtp_local_mail_and_own_senders_keep_their_sender(
    smtp_gate: App, smtp_sink: SmtpSink
) -> None:
    port = smtp_gate.ports[0]
    await asyncio.to_thread(transaction, port, "alice@orig.example", ["ann@example.com"])
    await asyncio.to_thread(transaction, port, "ann@example.com", ["bob@remote.example"])
    sent = await asyncio.to_thread(smtp_sink.wait_for_messages, 2)
    assert sorted(t.mail_from for t in sent) == ["alice@orig.example", "ann@example.com"]


async def test_smtp_bounce_to_postsrsd_address_is_reversed_and_bad_ones_refused(
    smtp_gate: App, smtp_sink: SmtpSink, postsrsd: Postsrsd
) -> None:
    good = postsrsd.forward("carol@orig.example")
    expired = SrsCodec((SECRET,), "fwd.example").forward(
        "dave@orig.example", time.time() - 30 * DAY
    )
    forged = good[:5] + ("A" if good[5] != "A" else "B") + good[6:]
    port = smtp_gate.ports[0]
    replies = await asyncio.to_thread(transaction, port, "", [good, expired, forged])
    codes = [(code, text.split()[0]) for code, text in replies[1:4]]
    assert codes == [(250, b"2.1.5"), (550, b"5.1.1"), (550, b"5.1.1")], replies
    assert b"expired" in replies[2][1] and b"hash" in replies[3][1]
    assert replies[4][0] == 250
    (tx,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert tx.mail_from == ""
    assert list(zip(tx.rcpts, tx.rcpt_params, strict=True)) == [
        ("carol@orig.example", (f"ORCPT=rfc822;{xtext(good)}",))
    ]


# -- end to end: Postfix with mailgate as its milter -------------------------------------------


@pytest.fixture(scope="module")
def milter_gate(peer_dirs: PeerDirs) -> Iterator[Gate]:
    """mailgate's milter listener behind a Postfix with one smtpd per milter protocol; Postfix
    delivers ``srs.test`` too, so it accepts SRS recipients for the milter to check."""
    loop = LoopThread()
    chain = Chain()
    listener = start_listener(loop, chain, "inet:127.0.0.1:0")
    main_cf = {"virtual_mailbox_domains": "local.test, srs.test"}
    gate = Gate(Postfix(peer_dirs.new("postfix-srs"), main_cf=main_cf), chain)
    for protocol in (6, 2):
        port = gate.postfix.add_listener([listener.address], protocol=protocol)
        gate.routes.append(Route(f"tcp-v{protocol}", port, protocol))
    gate.postfix.start()
    yield gate
    gate.postfix.stop()
    loop.run(listener.stop())
    loop.close()


def test_postfix_applies_srs_sender_and_reversed_recipient(milter_gate: Gate) -> None:
    settings = SrsSettings("srs.test", secrets=[SECRET], local_domains=["example.com"])
    milter_gate.chain.use(Srs(settings))
    srs = SrsCodec((SECRET,), "srs.test")
    for route in milter_gate.routes:
        sent = milter_gate.send(route, sender="alice@example.com", to=["bob@local.test"])
        assert sent.returncode == 0, sent.output
        (copy,) = milter_gate.delivered(sent)
        return_path = str(copy.message["Return-Path"]).strip("<>")
        assert return_path.startswith("SRS0=") and return_path.endswith("@srs.test"), route.name
        assert srs.reverse(return_path, time.time()) == "alice@example.com"

        bounce = srs.forward("ann@local.test", time.time())
        sent = milter_gate.send(route, sender="<>", to=[bounce])
        assert sent.returncode == 0, sent.output
        (copy,) = milter_gate.delivered(sent)
        assert copy.delivered_to == "ann@local.test", route.name
        assert copy.message["Return-Path"] == "<>", route.name

        forged = bounce.replace(bounce[5:9], "AAAA" if bounce[5:9] != "AAAA" else "BBBB")
        sent = milter_gate.send(route, sender="<>", to=[forged])
        assert sent.returncode != 0
        assert any(r.startswith("550 5.1.1") for r in sent.replies()), sent.output
