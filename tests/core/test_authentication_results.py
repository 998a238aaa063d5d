"""The Authentication-Results header: RFC 8601 syntax both ways, what goes in, and which
incoming headers go out."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.authentication_results import (
    AuthenticationResultsSettings,
    AuthResult,
    apply_authentication_results,
    forged_headers,
    header_value,
    results_of,
)
from mailgate.authentication_results.header import WIDTH, fold
from mailgate.authentication_results.parse import claimed_id, parse
from mailgate.authentication_results.syntax import SyntaxProblem, clean, is_token, pvalue
from mailgate.config import ConfigError
from mailgate.iprev import IPREV_NOTE, IprevResult
from mailgate.loader import load_config
from mailgate.message import Header, Message
from mailgate.session import Address, Session, Transaction

# -- reading: the examples of RFC 8601 appendix B ------------------------------------------------


def test_rfc8601_b2_nothing_was_checked() -> None:
    header = parse(" example.org 1; none")
    assert (header.authserv_id, header.version, header.results) == ("example.org", "1", [])


def test_rfc8601_b3_spf() -> None:
    header = parse(" example.com;\r\n          spf=pass smtp.mailfrom=example.net")
    assert header.results == [
        AuthResult("spf", "pass", properties={"smtp.mailfrom": "example.net"})
    ]


def test_rfc8601_b4_auth_and_iprev_with_comments() -> None:
    first = parse(
        " example.com;\r\n          auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
        "          spf=pass smtp.mailfrom=example.net"
    )
    assert first.results == [
        AuthResult("auth", "pass", properties={"smtp.auth": "sender@example.net"}),
        AuthResult("spf", "pass", properties={"smtp.mailfrom": "example.net"}),
    ]
    second = parse(" example.com; iprev=pass\r\n          policy.iprev=192.0.2.200")
    assert second.results == [
        AuthResult("iprev", "pass", properties={"policy.iprev": "192.0.2.200"})
    ]


def test_rfc8601_b6_reasons_and_addresses_without_local_part() -> None:
    header = parse(
        ' example.com;\r\n          dkim=pass reason="good signature"\r\n'
        "            header.i=@mail-router.example.net;\r\n"
        '          dkim=fail reason="bad signature"\r\n'
        "            header.i=@newyork.example.com"
    )
    assert header.results == [
        AuthResult("dkim", "pass", "good signature", {"header.i": "@mail-router.example.net"}),
        AuthResult("dkim", "fail", "bad signature", {"header.i": "@newyork.example.com"}),
    ]


def test_rfc8601_b7_comments_everywhere() -> None:
    header = parse(
        " foo.example.net (foobar) 1 (baz);\r\n"
        "    dkim (Because I like it) / 1 (One yay) = (wait for it) fail\r\n"
        "      policy (A dot can go here) . (like that) expired\r\n"
        "      (this surprised me) = (as I wasn't expecting it) 1362471462"
    )
    assert (header.authserv_id, header.version) == ("foo.example.net", "1")
    assert header.results == [
        AuthResult("dkim", "fail", properties={"policy.expired": "1362471462"})
    ]


@pytest.mark.parametrize(
    "value",
    [" example.com", " example.com; spf", " example.com; spf=", " ; spf=pass", ' "x; none'],
)
def test_what_is_not_rfc8601_is_refused(value: str) -> None:
    with pytest.raises(SyntaxProblem):
        parse(value)


# -- writing -------------------------------------------------------------------------------------


def test_nothing_checked_says_none() -> None:
    assert header_value("mx.example.net", []) == "mx.example.net; none"


def test_values_are_quoted_only_when_they_must_be() -> None:
    value = header_value(
        "mx.example.net",
        [
            AuthResult(
                "spf",
                "fail",
                'a "b"',
                {"smtp.mailfrom": "b@example.com", "smtp.helo": "a b"},
            ),
            AuthResult("dkim", "pass", properties={"header.i": "@example.com", "header.b": "a/b="}),
        ],
    )
    assert value == (
        "mx.example.net;\r\n"
        '\tspf=fail reason="a \\"b\\"" smtp.mailfrom=b@example.com smtp.helo="a b";\r\n'
        '\tdkim=pass header.i=@example.com header.b="a/b="'
    )


def test_an_authserv_id_that_is_not_a_token_is_quoted() -> None:
    assert header_value("mx example", []) == '"mx example"; none'


def test_control_characters_from_outside_never_end_the_header() -> None:
    value = header_value("mx", [AuthResult("spf", "fail", "evil\r\nX-Injected: yes\0")])
    assert "\r\nX-Injected" not in value
    assert parse(value).results[0].reason == "evil  X-Injected: yes "


@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_clean_makes_every_control_character_a_space_and_nothing_else(text: str) -> None:
    by_character = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    assert clean(text) == by_character


@pytest.mark.parametrize(
    "result",
    [
        AuthResult("spf pass", "pass"),
        AuthResult("spf", "pass;x"),
        AuthResult("spf", "pass", properties={"mailfrom": "x"}),
        AuthResult("spf", "pass", properties={"smtp.mail from": "x"}),
    ],
)
def test_names_that_are_not_keywords_are_refused(result: AuthResult) -> None:
    with pytest.raises(ValueError, match=r"keyword|ptype"):
        header_value("mx", [result])


keywords = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,8}[A-Za-z0-9]|[a-z]", fullmatch=True)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=120)
results = st.builds(
    AuthResult,
    method=keywords,
    result=keywords,
    reason=texts,
    properties=st.dictionaries(
        st.builds(lambda p, q: f"{p}.{q}", keywords, keywords),
        texts | st.emails() | st.from_regex(r"@[a-z]{1,9}\.[a-z]{2,5}", fullmatch=True),
        max_size=4,
    ),
    comment=texts,
)


def unfold(value: str) -> str:
    return value.replace("\r\n", "")


@given(
    authserv_id=st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True) | texts,
    found=st.lists(results, max_size=6),
)
def test_what_is_written_reads_back(authserv_id: str, found: list[AuthResult]) -> None:
    value = header_value(authserv_id, found)
    header = parse(value)
    assert header.authserv_id == (authserv_id if is_token(authserv_id) else clean(authserv_id))
    assert header.results == [
        AuthResult(
            r.method,
            r.result,
            clean(r.reason),
            {k: v if pvalue(v) == v else clean(v) for k, v in r.properties.items()},
        )
        for r in found
    ]
    assert parse(unfold(value)) == header


@given(
    authserv_id=st.from_regex(r"[a-z]{1,30}\.example", fullmatch=True),
    found=st.lists(results, max_size=6),
)
def test_the_header_is_folded_where_it_can_be_and_every_break_is_folding(
    authserv_id: str, found: list[AuthResult]
) -> None:
    value = header_value(authserv_id, found)
    lines = ("Authentication-Results: " + value).split("\r\n")
    for line in lines[1:]:
        assert line[:1] in (" ", "\t") and line.strip()
    for line in lines:
        assert "\r" not in line and "\n" not in line
        assert len(line) <= WIDTH or " " not in line.strip().lstrip("\t").strip('"'), line


# -- what goes in --------------------------------------------------------------------------------


def transaction_with_results() -> Transaction:
    tx = Transaction(Address("alice@example.com"))
    tx.set_result(
        "spf",
        "pass",
        reason="sender is authorized",
        auth_method="spf",
        auth_properties={"smtp.mailfrom": "example.com"},
    )
    tx.set_result("clamav", "clean")
    tx.set_result(
        "dkim",
        "pass",
        auth_results=[
            {"method": "dkim", "result": "pass", "properties": {"header.d": "example.com"}},
            {
                "method": "dkim",
                "result": "fail",
                "reason": "bad body hash",
                "properties": {"header.d": "example.org"},
            },
        ],
    )
    return tx


def test_results_of_the_checks_connection_first_then_plugin_order() -> None:
    session = Session(client_ip="192.0.2.1", auth_login="alice")
    session.notes[IPREV_NOTE] = IprevResult("pass", "192.0.2.1", "mail.example.com")
    assert results_of(session, transaction_with_results()) == [
        AuthResult("iprev", "pass", "", {"policy.iprev": "192.0.2.1"}, "mail.example.com"),
        AuthResult("auth", "pass", properties={"smtp.auth": "alice"}),
        AuthResult("spf", "pass", "sender is authorized", {"smtp.mailfrom": "example.com"}),
        AuthResult("dkim", "pass", properties={"header.d": "example.com"}),
        AuthResult("dkim", "fail", "bad body hash", {"header.d": "example.org"}),
    ]


def test_a_result_that_cannot_be_written_is_left_out() -> None:
    tx = Transaction(Address(""))
    tx.set_result("odd", "pass", auth_method="not a keyword")
    assert results_of(Session(client_ip="192.0.2.1"), tx) == []


def test_an_iprev_failure_gives_its_reason() -> None:
    session = Session(client_ip="192.0.2.1")
    session.notes[IPREV_NOTE] = IprevResult("permerror", "192.0.2.1", reason="no PTR record")
    assert results_of(session, Transaction(Address(""))) == [
        AuthResult("iprev", "permerror", "no PTR record", {"policy.iprev": "192.0.2.1"})
    ]


# -- which incoming headers go -------------------------------------------------------------------

OURS = "mx.example.net"
ids = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,12}){0,3}", fullmatch=True)
cfws = st.lists(
    st.sampled_from([" ", "\t", "\r\n ", "\r\n\t", "(x)", "(a (nested) \\) one)", "()"]),
    max_size=4,
).map("".join)


@st.composite
def claims(draw: st.DrawFn, authserv_id: str) -> str:
    """A header value claiming `authserv_id`, in any case, spacing, comments and quoting."""
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in authserv_id)
    written = f'"{cased}"' if draw(st.booleans()) else cased
    version = draw(st.sampled_from(["", " 1", " (v) 1"]))
    rest = draw(st.sampled_from([" none", " spf=pass smtp.mailfrom=example.com", "", "garbage"]))
    return f"{draw(cfws)}{written}{draw(cfws)}{version}{draw(cfws)};{rest}"


@given(data=st.data(), others=st.lists(ids, max_size=3), position=st.integers(0, 5))
def test_a_header_claiming_our_id_is_always_found(
    data: st.DataObject, others: list[str], position: int
) -> None:
    forged = data.draw(claims(OURS))
    name = data.draw(st.sampled_from(["Authentication-Results", "authentication-results"]))
    headers = [Header("Received", " from a"), Header("Subject", " hi")]
    headers += [Header("Authentication-Results", f" {o}; none") for o in others if o != OURS]
    headers.insert(min(position, len(headers)), Header(name, " " + forged))
    message = Message(headers, io.BytesIO(b""))
    for doomed_name, occurrence in forged_headers(message.headers, OURS):
        message.delete_header(doomed_name, occurrence)
    assert [h.raw_value for h in message.headers if "results" in h.name.lower()] == [
        f" {o}; none" for o in others if o != OURS
    ]


@given(data=st.data())
def test_arc_results_claiming_our_id_go_unless_the_chain_validated(data: st.DataObject) -> None:
    forged = Header("ARC-Authentication-Results", " i=1; " + data.draw(claims(OURS)))
    theirs = Header("ARC-Authentication-Results", " i=2; mx.example.org; none")
    assert forged_headers([theirs, forged], OURS) == [("ARC-Authentication-Results", 2)]
    assert forged_headers([theirs, forged], OURS, arc_chain_valid=True) == []


def test_remove_all_removes_every_authentication_results_last_first() -> None:
    headers = [
        Header("Authentication-Results", " a.example; none"),
        Header("Subject", " hi"),
        Header("Authentication-Results", " b.example; none"),
        Header("ARC-Authentication-Results", " i=1; a.example; none"),
    ]
    assert forged_headers(headers, OURS) == []
    assert forged_headers(headers, OURS, remove_all=True) == [
        ("Authentication-Results", 2),
        ("Authentication-Results", 1),
    ]


def test_a_header_a_plugin_added_in_this_pass_stays() -> None:
    headers = [Header("Authentication-Results", f" {OURS}; dkim=pass")]
    assert forged_headers(headers, OURS, added={f"{OURS}; dkim=pass"}) == []


@pytest.mark.parametrize(
    ("value", "claimed"),
    [
        (" (forged) MX.Example.NET (x);spf=pass", "mx.example.net"),
        (' "mx.example.net" 1; none', "mx.example.net"),
        (" (unclosed mx.example.net; none", None),
        (" ", None),
    ],
)
def test_claimed_id(value: str, claimed: str | None) -> None:
    assert claimed_id(value) == claimed


# -- the whole step ------------------------------------------------------------------------------


def test_apply_deletes_the_forged_header_and_puts_ours_first() -> None:
    tx = transaction_with_results()
    tx.message = Message(
        [
            Header("Received", " from a"),
            Header("Authentication-Results", " MX.example.net; spf=pass"),
            Header("Authentication-Results", " elsewhere.example; spf=fail"),
        ],
        io.BytesIO(b"body\r\n"),
    )
    settings = AuthenticationResultsSettings(authserv_id=OURS)
    apply_authentication_results(Session(client_ip="192.0.2.1"), tx, settings)
    names = [(h.name, h.value.split(";")[0]) for h in tx.message.headers]
    assert names == [
        ("Authentication-Results", OURS),
        ("Received", "from a"),
        ("Authentication-Results", "elsewhere.example"),
    ]
    assert "spf=pass" in tx.message.headers[0].value


def test_apply_does_nothing_when_switched_off() -> None:
    tx = Transaction(Address(""))
    tx.message = Message([Header("Authentication-Results", f" {OURS}; none")], io.BytesIO(b""))
    settings = AuthenticationResultsSettings(header=False, authserv_id=OURS)
    apply_authentication_results(Session(client_ip="192.0.2.1"), tx, settings)
    assert tx.modifications == []


@pytest.mark.parametrize("authserv_id", [' "x"', "a\nb", "x "])
def test_a_bad_authserv_id_is_refused(authserv_id: str) -> None:
    with pytest.raises(ValueError, match="authserv_id"):
        AuthenticationResultsSettings(authserv_id=authserv_id)


@given(st.text(st.characters(exclude_categories=["Cs"])) | st.text(alphabet=' \t\r\n();="\\.=/1a'))
def test_any_text_is_read_or_refused_never_crashes(text: str) -> None:
    with contextlib.suppress(SyntaxProblem):
        parse(text)
    claimed_id(text)
    claimed_id(text, arc=True)


# -- configuration -------------------------------------------------------------------------------


def test_the_configuration_turns_it_on_with_the_hostname_as_authserv_id(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[mailgate]\nhostname = "mx1.example.net"\n')
    pipeline = load_config(tmp_path).pipeline()
    settings = pipeline.authentication_results
    assert settings is not None and settings.authserv_id == "mx1.example.net"
    assert settings.remove == "ours"
    assert pipeline.reads("headers")  # the milter listener asks for them, to find forgeries
    assert pipeline.client_names is not None


def test_the_table_is_read_and_header_false_turns_it_off(tmp_path: Path) -> None:
    core = tmp_path / "mailgate.toml"
    core.write_text('[authentication_results]\nauthserv_id = "trusted.example"\nremove = "all"\n')
    settings = load_config(tmp_path).pipeline().authentication_results
    assert settings == AuthenticationResultsSettings(True, "trusted.example", "all")
    core.write_text("[authentication_results]\nheader = false\n[dns]\nreverse_lookups = false\n")
    pipeline = load_config(tmp_path).pipeline()
    assert pipeline.authentication_results is None and pipeline.client_names is None
    assert not pipeline.reads("headers")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('authserv_id = "two words "', "authentication_results.authserv_id"),
        ('remove = "forged"', "authentication_results.remove"),
        ('header = "yes"', "authentication_results.header"),
        ("authserv = 1", "authentication_results.authserv"),
    ],
)
def test_bad_settings_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "mailgate.toml").write_text(f"[authentication_results]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'mailgate.toml'}: {key}:")


def _fold_by_characters(line: str, taken: int) -> str:
    """The folding rule one character at a time (as `fold` first did), to compare with."""
    pieces: list[str] = []
    start, column, fold_at = 0, taken, -1
    for i, char in enumerate(line):
        if char == " " and i > start and line[i - 1] != " ":
            fold_at = i
        column += 1
        if column > WIDTH and fold_at > start:
            pieces.append(line[start:fold_at])
            start, column, fold_at = fold_at, i - fold_at + 1, -1
    pieces.append(line[start:])
    return "\r\n".join(pieces)


@given(
    line=st.text(alphabet=st.sampled_from(["a", "b", " ", " ", "=", '"']), max_size=400),
    taken=st.integers(0, 90),
)
def test_fold_folds_as_the_character_by_character_rule(line: str, taken: int) -> None:
    assert fold(line, taken) == _fold_by_characters(line, taken)
