"""The `rewrite` plugin's regex and expression rules: templates, order, checks at load, the
property that no address makes a rule produce an invalid one, and the rewritten envelope and
headers end to end (SMTP listener -> smtp-sink, and Postfix -> milter listener -> Maildir)."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate import Address, Message, Session, Transaction
from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.message import Header, new_spool
from mailgate.plugins.rewrite import Rewrite, Rewriter, RewriteSettings
from mailgate.plugins.rewrite.rule_expressions import Facts
from mailgate.plugins.rewrite.rules import RuleList, RuleSettings, is_valid_result
from mailgate.plugins.rewrite.template import parse_template
from tests.logs import captured_logs, events
from tests.milter.gate import Gate, open_gate
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs

__all__ = ["captured_logs"]

CONF_D = Path(__file__).resolve().parents[2] / "conf.d"

SUBADDRESS = RuleSettings(
    match=r"(?P<user>[^@+]+)\+(?P<tag>[^@]+)@(?P<host>example\.com)",
    replace="{user}@{host}",
)
"""``bob+tag@example.com`` -> ``bob@example.com`` (strip the subaddress)."""
CATCH_ALL = RuleSettings(
    match=r"(?!(?:ann|joe|postmaster)@).*@example\.com", replace="postmaster@example.com"
)
"""Everyone at example.com but ann, joe and postmaster goes to postmaster."""


def rules(*items: RuleSettings) -> RuleList:
    return RuleList([r.rule for r in items], "recipient")


def rewriter(**settings: Any) -> Rewriter:
    return Rewriter(RewriteSettings(**settings))


# -- templates ---------------------------------------------------------------------------------


def test_template_fields_by_name_number_and_address_part() -> None:
    template = parse_template("{user}.{2}+{{x}}@{domain}", ["user", "2", "domain"])
    assert template.fields == ("user", "2", "domain")
    assert template.render({"user": "a", "2": "b", "domain": "d.example"}) == "a.b+{x}@d.example"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{missing}@x.example", "{missing} names no group"),
        ("{user@x.example", "a lone '{'"),
        ("user}@x.example", "a lone '}'"),
        ("{a-b}@x.example", "is not a group name"),
    ],
)
def test_template_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_template(text, ["user"])


# -- rules -------------------------------------------------------------------------------------


def test_named_and_numbered_groups_and_address_parts() -> None:
    r = rules(
        RuleSettings(match=r"([^@]+)@(?P<sub>[a-z]+)\.old\.example", replace="{1}.{sub}@{sub}.new")
    )
    assert r.apply("jane@sales.old.example").address == "jane.sales@sales.new"
    local = rules(RuleSettings(match=r".*@old\.example", replace="{local}@new.example"))
    assert local.apply("Jane.Doe@old.example").address == "Jane.Doe@new.example"


def test_match_is_a_full_match_and_case_insensitive_unless_told() -> None:
    r = rules(RuleSettings(match=r"bob@example\.com", replace="robert@example.com"))
    assert r.apply("BOB@Example.COM").address == "robert@example.com"
    assert not r.apply("xbob@example.com").matched  # a full match, not a search
    assert not r.apply("bob@example.com.evil").matched
    exact = rules(
        RuleSettings(match=r"bob@example\.com", replace="robert@example.com", ignore_case=False)
    )
    assert not exact.apply("BOB@example.com").matched


def test_rules_stop_after_a_match_unless_told_to_continue() -> None:
    first = RuleSettings(match=r"(.*)@a\.example", replace="{1}@b.example", stop=False)
    second = RuleSettings(match=r"(.*)@b\.example", replace="{1}@c.example")
    third = RuleSettings(match=r".*", replace="never@x.example")
    assert rules(first, second, third).apply("u@a.example").address == "u@c.example"
    stopping = RuleSettings(match=r"(.*)@a\.example", replace="{1}@b.example")
    assert rules(stopping, second).apply("u@a.example").address == "u@b.example"


def test_match_by_expression_and_replace_by_expression() -> None:
    by_expression = RuleSettings(
        when='domain.endsWith(".legacy.example") && !local.startsWith("keep")',
        replace_expr='lower(local) + "@" + replace(domain, ".legacy.example", ".example")',
    )
    r = rules(by_expression)
    assert r.apply("Ann@eu.legacy.example").address == "ann@eu.example"
    assert not r.apply("keeper@eu.legacy.example").matched
    both = RuleSettings(
        match=r"(?P<user>.+)@(?P<host>.+)",
        when='groups.host == "x.example"',
        replace_expr='groups.user + "@y.example"',
    )
    assert rules(both).apply("a@x.example").address == "a@y.example"
    assert not rules(both).apply("a@z.example").matched


def test_when_sees_the_session_and_transaction() -> None:
    rule = RuleSettings(match=r"(.*)@in\.example", when='listener == "inbound"', replace="{1}@x.y")
    session = Session("192.0.2.1", listener="inbound")
    assert rules(rule).apply("a@in.example", Facts(session)).address == "a@x.y"
    assert not rules(rule).apply("a@in.example", Facts(Session("192.0.2.1"))).matched


def test_subaddress_and_catch_all_as_regexes() -> None:
    r = rules(
        RuleSettings(match=SUBADDRESS.match, replace=SUBADDRESS.replace, stop=False),
        CATCH_ALL,
    )
    assert r.apply("ann+news@example.com").address == "ann@example.com"
    assert r.apply("joe@example.com").address == "joe@example.com"
    assert r.apply("stranger+x@example.com").address == "postmaster@example.com"
    assert not r.apply("stranger@example.org").matched


def test_an_invalid_result_is_logged_and_the_address_kept(
    captured_logs: list[dict[str, Any]],
) -> None:
    r = rules(
        RuleSettings(match=r"(?P<user>.*)@bad\.example", replace="{user}", stop=False),
        RuleSettings(match=r"(?P<user>.*)@bad\.example", replace="{user} x@y.example"),
    )
    outcome = r.apply("ann@bad.example")
    assert outcome.matched and outcome.address == "ann@bad.example"
    logged = events(captured_logs, "rewrite rule made an invalid address, kept the address")
    assert [(e["rule"], e["result"]) for e in logged] == [(0, "ann"), (1, "ann x@y.example")]


def test_maps_first_then_rules_then_catch_all_and_stripping() -> None:
    r = rewriter(
        recipients={"sales@example.com": "ann@example.com"},
        recipient_rules=[RuleSettings(match=r"(.*)@old\.example", replace="{1}@example.com")],
        catch_all={"@example.com": "postmaster@example.com"},
        known_recipients=["ann@example.com", "bob@example.com"],
        strip_subaddress=True,
    )
    assert r.recipient("sales@example.com") == ["ann@example.com"]  # the map entry
    assert r.recipient("stranger+x@old.example") == ["stranger+x@example.com"]  # a rule: done
    assert r.recipient("stranger@example.com") == ["postmaster@example.com"]  # no rule matched
    assert r.recipient("bob+x@example.com") == ["bob@example.com"]  # stripped


def test_sender_rules_and_the_null_sender() -> None:
    r = rewriter(
        sender={"ceo@example.com": "office@example.com"},
        sender_rules=[
            RuleSettings(match=r"(?P<u>[^@]+)@(?:.+\.)?corp\.example", replace="{u}@example.com")
        ],
    )
    assert r.sender("ceo@example.com") == "office@example.com"
    assert r.sender("al@mail.corp.example") == "al@example.com"
    assert r.sender("al@elsewhere.example") is None
    assert r.sender("") is None


# -- properties --------------------------------------------------------------------------------

PROPERTY_RULES = rules(
    RuleSettings(
        match=r"(?P<user>.*)\+(?P<tag>.*)@(?P<host>.*)", replace="{user}@{host}", stop=False
    ),
    RuleSettings(match=r"(.*)@(.*)", replace="{2}@{1}", stop=False),
    RuleSettings(match=r"(?P<all>.*)", replace="{all}.x@example.org", stop=False),
    RuleSettings(when="local.size() > 3", replace_expr='local + "@" + local', stop=False),
    RuleSettings(match=r"([^@]*)@.*", replace="{1}{1}{1}{1}@example.com", stop=False),
    CATCH_ALL,
)

addresses = st.one_of(
    st.emails(),
    st.text(max_size=80),
    st.builds(
        lambda local, domain: f"{local}@{domain}", st.text(max_size=70), st.text(max_size=70)
    ),
)


@settings(max_examples=500, deadline=None)
@given(address=addresses)
def test_no_address_makes_a_rule_produce_an_invalid_address_or_raise(address: str) -> None:
    outcome = PROPERTY_RULES.apply(address)
    assert outcome.address == address or is_valid_result(outcome.address)


@settings(deadline=None)
@given(address=st.emails())
def test_a_valid_address_stays_valid_through_the_rewriter(address: str) -> None:
    r = rewriter(
        recipient_rules=[SUBADDRESS, RuleSettings(match=r"(.*)@(.*)", replace="{1}@{2}.x")],
        sender_rules=[RuleSettings(match=r"(?P<local>.*)@.*", replace="{local}.{local}@a.example")],
    )
    for result in (r.recipient(address) or [address], [r.sender(address) or address]):
        assert all(is_valid_result(a) for a in result) or result == [address]


# -- settings ----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "70-rewrite.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            '[[recipient_rules]]\nmatch = "(unclosed"\nreplace = "a@b.example"',
            "recipient_rules[0].match",
            "not a regular expression",
        ),
        (
            '[[sender_rules]]\nmatch = "(?P<u>.*)@x"\nreplace = "{user}@y.example"',
            "sender_rules[0].replace",
            "{user} names no group",
        ),
        (
            '[[recipient_rules]]\nmatch = "(.*)@x"\nreplace = "{2}@y.example"',
            "recipient_rules[0].replace",
            "{2} names no group",
        ),
        ('[[recipient_rules]]\nreplace = "a@b.example"', "recipient_rules[0]", "needs a match"),
        ('[[recipient_rules]]\nmatch = "x"', "recipient_rules[0]", "needs either replace"),
        (
            '[[recipient_rules]]\nmatch = "x"\nreplace = "a@b"\nreplace_expr = "local"',
            "recipient_rules[0].replace",
            "needs either replace",
        ),
        (
            '[[recipient_rules]]\nwhen = "nosuch"\nreplace = "a@b.example"',
            "recipient_rules[0].when",
            "unknown variable 'nosuch'",
        ),
        (
            '[[recipient_rules]]\nwhen = "local"\nreplace = "a@b.example"',
            "recipient_rules[0].when",
            "expected a bool",
        ),
        (
            '[[recipient_rules]]\nmatch = "x"\nreplace_expr = "size"',
            "recipient_rules[0].replace_expr",
            "expected a string",
        ),
        (
            '[[recipient_rules]]\nmatch = "x"\nreplace = "a@b.example"\nstop = "yes"',
            "recipient_rules[0].stop",
            "true or false",
        ),
        (
            '[[recipient_rules]]\nmatch = "x"\nreplace = "a@b.example"\nname = "y"',
            "recipient_rules[0].name",
            "unknown",
        ),
    ],
)
def test_bad_rules_stop_loading_with_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.file.endswith("70-rewrite.toml")
    assert caught.value.key == key
    assert reason in str(caught.value)


def test_shipped_file_rules_load_when_uncommented(tmp_path: Path) -> None:
    text = (CONF_D / "70-rewrite.toml").read_text().replace("enabled = false", "enabled = true", 1)
    head, _, rules_part = text.partition("# --- rules")
    examples = [line[2:] for line in rules_part.splitlines() if line.startswith("# [[")]
    uncommented = "\n".join(
        line[2:]
        if line.startswith(("# [[", "# match", "# replace", "# stop", "# headers", "# when"))
        else ""
        for line in rules_part.splitlines()
    )
    assert len(examples) == 4
    pipeline = load_config(write(tmp_path, head + uncommented)).pipeline()
    (plugin,) = [p for p in pipeline.plugins if p.name == "rewrite"]
    assert isinstance(plugin.instance, Rewrite)
    rewriter = plugin.instance.rewriter
    assert rewriter.sender("al@mail.corp.example") == "al@example.com"
    assert rewriter.recipient("bob+tag@example.com") == ["postmaster@example.com"]
    assert rewriter.recipient("ann+tag@example.com") == ["ann@example.com"]


def test_header_rules_make_the_plugin_read_headers(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text("[authentication_results]\nheader = false\n")
    rule = '[[sender_rules]]\nmatch = "(.*)@a.example"\nreplace = "{1}@b.example"\n'
    pipeline = load_config(write(tmp_path, rule)).pipeline()
    assert not pipeline.reads("headers")
    pipeline = load_config(write(tmp_path, rule + "headers = true\n")).pipeline()
    assert pipeline.reads("headers") and not pipeline.reads("body")


# -- hooks, without a network ------------------------------------------------------------------

RULES_CONF = r"""
[[sender_rules]]
match = '(?P<user>[^@]+)@(?:[a-z0-9-]+\.)*corp\.example'
replace = "{user}@example.com"
headers = true

[[recipient_rules]]
match = '(?P<user>[^@+]+)\+[^@]*@example\.com'
replace = "{user}@example.com"
stop = false
headers = true

[[recipient_rules]]
match = '(?!(?:ann|joe|postmaster)@).*@example\.com'
replace = "postmaster@example.com"
"""


async def test_hooks_rewrite_envelope_and_headers_keeping_names_and_other_addresses(
    tmp_path: Path,
) -> None:
    pipeline = load_config(write(tmp_path, RULES_CONF)).pipeline()
    session = Session("127.0.0.1")
    tx = Transaction(Address("al@mail.corp.example", ["BODY=8BITMIME"]))
    await pipeline.mail(session, tx)
    assert (tx.sender.address, tx.sender.params) == ("al@example.com", ["BODY=8BITMIME"])
    for rcpt in (Address("ann+x@example.com"), Address("zed@example.com"), Address("q@else.test")):
        made = len(tx.modifications)
        await pipeline.rcpt(session, tx, rcpt)
        if not tx.deletes_since(made, rcpt.address):
            tx.recipients.append(rcpt)
    assert [r.address for r in tx.recipients] == [
        "ann@example.com",
        "postmaster@example.com",
        "q@else.test",
    ]
    headers = [
        Header.new("From", '"Al, CEO" <al@mail.corp.example> (the boss)'),
        Header.new("To", 'Ann <ann+x@example.com>, "q" <q@else.test>,\r\n zed@example.com'),
        Header.new("Cc", "undisclosed-recipients:;"),
    ]
    tx.message = Message(headers, new_spool())
    await pipeline.message(session, tx)
    assert tx.message.get("From") == '"Al, CEO" <al@example.com> (the boss)'
    # The subaddress rule has headers = true, the catch-all rule has not.
    assert tx.message.get("To") == 'Ann <ann@example.com>, "q" <q@else.test>,\r\n zed@example.com'
    assert tx.message.get("Cc") == "undisclosed-recipients:;"


# -- end to end: the SMTP listener relaying to smtp-sink ---------------------------------------


@pytest.fixture
async def smtp_gate(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    """mailgate with the rewrite rules, relaying to smtp-sink."""
    write(tmp_path, RULES_CONF)
    host, port = smtp_sink.address
    app = App(tmp_path, listen="127.0.0.1:0", relay=f"{host}:{port}", configure_logs=False)
    await app.start()
    yield app
    await app.stop()


def send(port: int, sender: str, rcpts: list[str], message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        code, text = client.mail(sender)
        assert code == 250, text
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt, ["NOTIFY=FAILURE"])
            assert code == 250, text
        code, text = client.data(message)
        assert code == 250, text


async def test_smtp_listener_relays_what_the_rules_made(
    smtp_gate: App, smtp_sink: SmtpSink
) -> None:
    message = (
        b'From: "Al" <al@mail.corp.example>\r\nTo: Ann <ann+news@example.com>, other@else.test\r\n'
        b"Cc: zed@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
    )
    rcpts = ["ann+news@example.com", "zed@example.com", "other@else.test"]
    await asyncio.to_thread(send, smtp_gate.ports[0], "al@mail.corp.example", rcpts, message)
    (tx,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert tx.mail_from == "al@example.com"
    assert dict(zip(tx.rcpts, tx.rcpt_params, strict=True)) == {
        "ann@example.com": ("NOTIFY=FAILURE", "ORCPT=rfc822;ann+2Bnews@example.com"),
        "postmaster@example.com": ("NOTIFY=FAILURE", "ORCPT=rfc822;zed@example.com"),
        "other@else.test": ("NOTIFY=FAILURE",),
    }
    assert tx.header("From") == '"Al" <al@example.com>'
    assert tx.header("To") == "Ann <ann@example.com>, other@else.test"
    assert tx.header("Cc") == "zed@example.com"


# -- end to end: Postfix with mailgate as its milter -------------------------------------------


@pytest.fixture(scope="module")
def milter_gate(peer_dirs: PeerDirs) -> Iterator[Gate]:
    """mailgate's milter listener behind a Postfix with one smtpd per milter protocol."""
    with open_gate(peer_dirs.new("postfix-rewrite-rules"), [("tcp", "inet:127.0.0.1:0")]) as gate:
        yield gate


def test_postfix_applies_what_the_rules_made(milter_gate: Gate) -> None:
    settings = RewriteSettings(
        sender_rules=[
            RuleSettings(
                match=r"(?P<user>[^@]+)@example\.com",
                replace="{user}@bounces.local.test",
                headers=True,
            )
        ],
        recipient_rules=[
            RuleSettings(
                match=r"(?P<user>[^@+]+)\+[^@]*@local\.test",
                replace="{user}@local.test",
                stop=False,
                headers=True,
            ),
            RuleSettings(match=r"(?!(?:ann|joe)@).*@local\.test", replace="joe@local.test"),
        ],
    )
    milter_gate.chain.use(Rewrite(settings))
    for route in milter_gate.routes:
        sent = milter_gate.send(
            route,
            sender="alice@example.com",
            to=["ann+tag@local.test", "stranger@local.test"],
            headers=[
                'From: "Alice A." <alice@example.com>',
                "To: Ann <ann+tag@local.test>, stranger@local.test",
                "Cc: Someone <someone@elsewhere.test>",
            ],
        )
        assert sent.returncode == 0, sent.output
        copies = milter_gate.delivered(sent, count=2)
        assert sorted(c.delivered_to for c in copies) == ["ann@local.test", "joe@local.test"], (
            route.name
        )
        for copy in copies:
            message = copy.message
            assert message["Return-Path"] == "<alice@bounces.local.test>", route.name
            assert message["From"] == '"Alice A." <alice@bounces.local.test>', route.name
            assert message["To"] == "Ann <ann@local.test>, stranger@local.test", route.name
            assert message["Cc"] == "Someone <someone@elsewhere.test>", route.name
    log = milter_gate.postfix.maillog()
    assert "warning" not in log.lower(), log
