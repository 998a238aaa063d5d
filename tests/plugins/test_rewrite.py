"""The `rewrite` plugin: lookup order, settings checks, and the rewritten envelope end to end
(SMTP listener -> smtp-sink, and Postfix -> milter listener -> Maildir)."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate import Address, Message, Session, Transaction
from mailgate.app import App
from mailgate.config import ConfigError, Dynamic
from mailgate.loader import load_config
from mailgate.message import Header, new_spool
from mailgate.plugins.rewrite import (
    AddressMap,
    HeaderRewrite,
    Lookup,
    Rewrite,
    Rewriter,
    RewriteSettings,
    rewrite,
    with_orcpt,
)
from tests.milter.gate import Gate, open_gate
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs

CONF_D = Path(__file__).resolve().parents[2] / "conf.d"


def rewriter(**settings: object) -> Rewriter:
    return Rewriter(RewriteSettings(**settings))  # type: ignore[arg-type]


# -- lookup ------------------------------------------------------------------------------------


def test_exact_address_wins_over_the_domain() -> None:
    r = rewriter(
        recipients={"bob@old.example": "robert@new.example", "@old.example": "@new.example"}
    )
    assert r.recipient("bob@old.example") == ["robert@new.example"]
    assert r.recipient("carol@old.example") == ["carol@new.example"]
    assert r.recipient("carol@other.example") is None


def test_domain_is_compared_without_case_and_the_local_part_as_written() -> None:
    r = rewriter(recipients={"Bob@Old.Example": "robert@new.example"})
    assert r.recipient("Bob@OLD.example") == ["robert@new.example"]
    assert r.recipient("bob@old.example") is None
    ci = rewriter(recipients={"Bob@Old.Example": "robert@new.example"}, case_insensitive_local=True)
    assert ci.recipient("BOB@old.example") == ["robert@new.example"]


def test_domain_value_keeps_the_local_part_and_full_value_replaces_it() -> None:
    r = rewriter(recipients={"@a.example": "@b.example", "@c.example": "all@d.example"})
    assert r.recipient("Jane.Doe@a.example") == ["Jane.Doe@b.example"]
    assert r.recipient("jane@c.example") == ["all@d.example"]


def test_subaddress_lookup_order_and_the_tag_is_kept() -> None:
    table = {"bob+sales@x.example": "sales@y.example", "bob@x.example": "robert@y.example"}
    r = rewriter(recipients=table)
    assert r.recipient("bob+sales@x.example") == ["sales@y.example"]  # exact first
    assert r.recipient("bob+news@x.example") == ["robert+news@y.example"]  # then without tag
    assert r.recipient("bob@x.example") == ["robert@y.example"]


def test_strip_subaddress() -> None:
    r = rewriter(recipients={"bob@x.example": "robert@y.example"}, strip_subaddress=True)
    assert r.recipient("bob+news@x.example") == ["robert@y.example"]
    assert r.recipient("carol+news@x.example") == ["carol@x.example"]
    assert r.recipient("carol@x.example") is None
    assert r.recipient("+news@x.example") is None  # a leading delimiter is no subaddress


def test_delimiters_are_characters_and_empty_means_off() -> None:
    r = rewriter(recipients={"bob@x.example": "robert@y.example"}, subaddress_delimiter="+-")
    assert r.recipient("bob-list@x.example") == ["robert-list@y.example"]
    off = rewriter(recipients={"bob@x.example": "robert@y.example"}, subaddress_delimiter="")
    assert off.recipient("bob+news@x.example") is None


def test_list_expansion() -> None:
    r = rewriter(recipients={"list@x.example": ["a@y.example", "b@y.example", "A@y.example"]})
    assert r.recipient("list@x.example") == ["a@y.example", "b@y.example"]


def test_catch_all_sends_unknown_recipients_to_one_address() -> None:
    r = rewriter(
        catch_all={"@x.example": "postmaster@x.example"},
        known_recipients=["bob@x.example"],
        recipients={"sales@x.example": "carol@x.example"},
    )
    assert r.recipient("nobody@x.example") == ["postmaster@x.example"]
    assert r.recipient("nobody+tag@x.example") == ["postmaster@x.example"]
    assert r.recipient("bob@x.example") is None
    assert r.recipient("bob+tag@x.example") is None  # known without its subaddress
    assert r.recipient("sales@x.example") == ["carol@x.example"]  # the map comes first
    assert r.recipient("postmaster@x.example") is None
    assert r.recipient("nobody@y.example") is None


def test_sender_map_and_the_null_sender() -> None:
    r = rewriter(sender={"@old.example": "@new.example", "ceo@new.example": "office@new.example"})
    assert r.sender("alice+list@old.example") == "alice+list@new.example"
    assert r.sender("ceo@new.example") == "office@new.example"
    assert r.sender("") is None
    assert r.sender("x@unrelated.example") is None


def test_orcpt_is_added_only_when_absent_and_xtext_encoded() -> None:
    assert with_orcpt(("NOTIFY=NEVER",), "bob+x=y@a.example") == (
        "NOTIFY=NEVER",
        "ORCPT=rfc822;bob+2Bx+3Dy@a.example",
    )
    assert with_orcpt(("ORCPT=rfc822;first@a.example",), "b@a.example") == (
        "ORCPT=rfc822;first@a.example",
    )
    assert with_orcpt((), "jöhn@a.example") == ()


locals_ = st.from_regex(r"\A[a-z0-9][a-z0-9._=-]{0,15}[a-z0-9]\Z")
tags = st.from_regex(r"\A[a-z0-9]{1,8}\Z")


@given(local=locals_, tag=tags)
def test_a_domain_rewrite_always_keeps_the_local_part(local: str, tag: str) -> None:
    table = AddressMap({"@old.example": "@new.example"}, Lookup("+"))
    assert rewrite(f"{local}@old.example", table, strip=False) == [f"{local}@new.example"]
    assert rewrite(f"{local}+{tag}@OLD.example", table, strip=False) == [
        f"{local}+{tag}@new.example"
    ]
    assert rewrite(f"{local}+{tag}@old.example", table, strip=True) == [f"{local}@new.example"]


@given(local=locals_, tag=tags)
def test_stripping_removes_exactly_the_subaddress(local: str, tag: str) -> None:
    r = rewriter(strip_subaddress=True)
    assert r.recipient(f"{local}+{tag}@x.example") == [f"{local}@x.example"]
    assert r.recipient(f"{local}@x.example") is None


# -- settings ----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "70-rewrite.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('sender = { "old@x.example" = "not an address" }', "sender.old@x.example"),
        ('sender = { "nodomain" = "a@b.example" }', "sender"),
        ('recipients = { "l@x.example" = ["a@b.example", "bad@"] }', "recipients.l@x.example"),
        ('recipients = { "l@x.example" = [] }', "recipients"),
        ('catch_all = { "x.example" = "pm@x.example" }', "catch_all"),
        ('catch_all = { "@x.example" = "@y.example" }', "catch_all.@x.example"),
        ('known_recipients = ["bob"]', "known_recipients[0]"),
        ('subaddress_delimiter = "@"', "subaddress_delimiter"),
        ('known_recipients_file = "/nonexistent/known"', "known_recipients_file"),
        ("strip_subaddress = 1", "strip_subaddress"),
    ],
)
def test_bad_values_stop_loading_with_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == key
    assert caught.value.file.endswith("70-rewrite.toml")


def test_known_recipients_file(tmp_path: Path) -> None:
    known = tmp_path / "known"
    known.write_text("# the real users\nbob@x.example\n\n  carol@x.example  \n")
    settings = RewriteSettings(
        catch_all=Dynamic.fixed({"@x.example": "pm@x.example"}), known_recipients_file=known
    )
    r = Rewriter(settings)
    assert r.recipient("carol@x.example") is None
    assert r.recipient("dave@x.example") == ["pm@x.example"]
    known.write_text("bob@x.example\nnot-an-address\n")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f'known_recipients_file = "{known}"'))
    assert caught.value.key == "known_recipients_file"
    assert "line 2" in str(caught.value)


def test_shipped_file_is_disabled_and_loads_when_enabled(tmp_path: Path) -> None:
    text = (CONF_D / "70-rewrite.toml").read_text()
    assert "rewrite" not in {p.name for p in load_config(write(tmp_path, text)).chain}
    enabled = text.replace("enabled = false", "enabled = true", 1)
    pipeline = load_config(write(tmp_path, enabled)).pipeline()
    (plugin,) = [p for p in pipeline.plugins if p.name == "rewrite"]
    assert isinstance(plugin.instance, Rewrite)
    assert plugin.instance.rewriter.recipient("x@old.example") == ["x@example.com"]


def test_reads_nothing_unless_rewrite_headers(tmp_path: Path) -> None:
    # The core's Authentication-Results step reads the headers too (forged ones): off here.
    (tmp_path / "mailgate.toml").write_text("[authentication_results]\nheader = false\n")
    pipeline = load_config(write(tmp_path, 'sender = { "@a.example" = "@b.example" }')).pipeline()
    assert not pipeline.reads("headers") and not pipeline.reads("body")
    assert type(pipeline.plugins[-1].instance) is Rewrite
    pipeline = load_config(write(tmp_path, "rewrite_headers = true")).pipeline()
    assert isinstance(pipeline.plugins[-1].instance, HeaderRewrite)
    assert pipeline.reads("headers") and not pipeline.reads("body")


# -- hooks, without a network ------------------------------------------------------------------


async def test_hooks_change_the_transaction(tmp_path: Path) -> None:
    text = (
        'sender = { "@old.example" = "@new.example" }\n'
        'recipients = { "list@x.example" = ["a@x.example", "b@x.example"] }\n'
        "rewrite_headers = true\n"
    )
    pipeline = load_config(write(tmp_path, text)).pipeline()
    session = Session("127.0.0.1")  # relay_control lets it relay
    tx = Transaction(Address("al@old.example", ["BODY=8BITMIME"]))
    await pipeline.mail(session, tx)
    assert (tx.sender.address, tx.sender.params) == ("al@new.example", ["BODY=8BITMIME"])
    for rcpt in (Address("list@x.example", ["NOTIFY=NEVER"]), Address("c@x.example")):
        made = len(tx.modifications)
        await pipeline.rcpt(session, tx, rcpt)
        if not tx.deletes_since(made, rcpt.address):  # as the listeners do
            tx.recipients.append(rcpt)
    await pipeline.data(session, tx)
    orcpt = "ORCPT=rfc822;list@x.example"
    assert [(r.address, r.params) for r in tx.recipients] == [
        ("a@x.example", ["NOTIFY=NEVER", orcpt]),
        ("b@x.example", ["NOTIFY=NEVER", orcpt]),
        ("c@x.example", []),
    ]
    headers = [
        Header.new("From", '"Al" <al@old.example>'),
        Header.new("To", "list@x.example,\r\n c@x.example"),
    ]
    tx.message = Message(headers, new_spool())
    await pipeline.message(session, tx)
    assert tx.message.get("From") == '"Al" <al@new.example>'
    assert tx.message.get("To") == "list@x.example,\r\n c@x.example"  # a list is no header rewrite


# -- end to end: the SMTP listener relaying to smtp-sink ---------------------------------------

CONF = """
when = 'rcpt.domain != "untouched.example"'
sender = { "@old.example" = "@new.example" }
recipients = { "bob@old.example" = "robert@new.example", "team@new.example" = [
    "ann@new.example", "joe@new.example"] }
strip_subaddress = true
catch_all = { "@new.example" = "postmaster@new.example" }
known_recipients = ["robert@new.example", "ann@new.example", "joe@new.example", "keep@new.example"]
"""


@pytest.fixture
async def smtp_gate(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    """mailgate with the rewrite plugin, relaying to smtp-sink."""
    write(tmp_path, CONF)
    host, port = smtp_sink.address
    app = App(tmp_path, listen="127.0.0.1:0", relay=f"{host}:{port}", configure_logs=False)
    await app.start()
    yield app
    await app.stop()


def send(port: int, sender: str, rcpts: dict[str, list[str]]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        code, text = client.mail(sender, ["BODY=8BITMIME"])
        assert code == 250, text
        for rcpt, options in rcpts.items():
            code, text = client.rcpt(rcpt, options)
            assert code == 250, text
        code, text = client.data(b"From: x@old.example\r\nSubject: hi\r\n\r\nhello\r\n")
        assert code == 250, text


async def test_smtp_listener_relays_the_rewritten_envelope(
    smtp_gate: App, smtp_sink: SmtpSink
) -> None:
    rcpts = {
        "x+y@untouched.example": [],
        "bob+news@old.example": ["NOTIFY=SUCCESS,FAILURE"],
        "team@new.example": ["NOTIFY=NEVER", "ORCPT=rfc822;team@list.example"],
        "stranger@new.example": [],
        "keep@new.example": ["NOTIFY=DELAY"],
    }
    await asyncio.to_thread(send, smtp_gate.ports[0], "alice@old.example", rcpts)
    (tx,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert tx.mail_from == "alice@new.example"
    assert "BODY=8BITMIME" in tx.mail_params
    got = dict(zip(tx.rcpts, tx.rcpt_params, strict=True))
    assert got == {
        "x+y@untouched.example": (),  # `when` was false for it: not stripped
        "robert@new.example": ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+2Bnews@old.example"),
        "ann@new.example": ("NOTIFY=NEVER", "ORCPT=rfc822;team@list.example"),
        "joe@new.example": ("NOTIFY=NEVER", "ORCPT=rfc822;team@list.example"),
        "postmaster@new.example": ("ORCPT=rfc822;stranger@new.example",),
        "keep@new.example": ("NOTIFY=DELAY",),
    }
    assert tx.header("From") == "x@old.example"  # rewrite_headers is off


async def test_smtp_listener_when_false_for_the_last_recipient(
    smtp_gate: App, smtp_sink: SmtpSink
) -> None:
    rcpts: dict[str, list[str]] = {"bob@old.example": [], "x@untouched.example": []}
    await asyncio.to_thread(send, smtp_gate.ports[0], "alice@old.example", rcpts)
    (tx,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert sorted(tx.rcpts) == ["robert@new.example", "x@untouched.example"]


# -- end to end: Postfix with mailgate as its milter -------------------------------------------


@pytest.fixture(scope="module")
def milter_gate(peer_dirs: PeerDirs) -> Iterator[Gate]:
    """mailgate's milter listener behind a Postfix with one smtpd per milter protocol."""
    with open_gate(peer_dirs.new("postfix-rewrite"), [("tcp", "inet:127.0.0.1:0")]) as gate:
        yield gate


def test_postfix_applies_the_rewritten_envelope(milter_gate: Gate) -> None:
    settings = RewriteSettings(
        sender=Dynamic.fixed({"@example.com": "@bounces.local.test"}),
        recipients=Dynamic.fixed(
            {
                "old@local.test": "new@local.test",
                "list@local.test": ["ann@local.test", "joe@local.test"],
            }
        ),
        strip_subaddress=True,
        rewrite_headers=True,
    )
    milter_gate.chain.use(Rewrite(settings))
    for route in milter_gate.routes:
        sent = milter_gate.send(
            route,
            sender="alice@example.com",
            to=["old@local.test", "list@local.test", "keep+tag@local.test"],
            headers=["From: Alice <alice@example.com>", "To: old@local.test"],
        )
        assert sent.returncode == 0, sent.output
        copies = milter_gate.delivered(sent, count=4)
        assert sorted(c.delivered_to for c in copies) == [
            "ann@local.test",
            "joe@local.test",
            "keep@local.test",
            "new@local.test",
        ], route.name
        for copy in copies:
            assert copy.message["Return-Path"] == "<alice@bounces.local.test>", route.name
            assert copy.message["From"] == "Alice <alice@bounces.local.test>", route.name
            assert copy.message["To"] == "new@local.test", route.name
    log = milter_gate.postfix.maillog()
    assert "warning" not in log.lower(), log
