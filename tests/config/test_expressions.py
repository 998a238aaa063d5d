"""CEL expressions: compiled and checked at load, evaluated against live sessions."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.expressions import Expression, ExpressionError, current_recipient, ip_in, re_match
from mailgate.message import Header, Message, new_spool
from mailgate.session import Address, Session, Transaction


def session(**kw: object) -> Session:
    return Session(client_ip=str(kw.pop("client_ip", "192.0.2.10")), **kw)  # type: ignore[arg-type]


def test_syntax_error_gives_position() -> None:
    with pytest.raises(ExpressionError) as err:
        Expression("client.ip ==")
    assert err.value.position == "1:13"
    assert "at 1:13" in str(err.value)


def test_unknown_variable_is_refused() -> None:
    with pytest.raises(ExpressionError, match="unknown variable 'clinet'"):
        Expression('clinet.ip == "1.2.3.4"')


def test_type_error_is_refused_at_load() -> None:
    with pytest.raises(ExpressionError, match="string \\+ int"):
        Expression("client.ip + 1 == 2")


def test_non_bool_is_refused() -> None:
    with pytest.raises(ExpressionError, match="evaluates to int, expected a bool"):
        Expression("size")


def test_non_bool_allowed_when_asked() -> None:
    assert Expression("size", boolean=False).evaluate(session(), None) == 0


def test_comprehension_variables_are_not_unknown() -> None:
    e = Expression('rcpts.exists(r, r.domain == "example.org")')
    tx = Transaction(Address("a@example.net"), [Address("x@Example.ORG")])
    assert e(session(), tx)
    assert not e(session(), Transaction(Address("a@example.net"), [Address("x@example.com")]))


def test_session_and_sender_facts() -> None:
    e = Expression(
        'client.ip == "192.0.2.10" && helo == "mx.example.net" && sender.domain == "example.net"'
        ' && sender.local == "alice" && listener == "smtp" && !tls && !authenticated'
    )
    s = session(helo="mx.example.net")
    assert e(s, Transaction(Address("alice@example.net")))
    assert not e(s, Transaction(Address("bob@example.net")))


def test_facts_follow_changes_within_a_session() -> None:
    e = Expression('auth.login == "alice" && authenticated')
    s = session()
    assert not e(s, None)
    s.auth_login = "alice"
    assert e(s, None)


def test_rcpt_is_the_recipient_being_checked() -> None:
    e = Expression('rcpt.domain == "example.org"')
    tx = Transaction(Address("a@example.net"), [Address("b@example.com")])
    assert not e(session(), tx)
    token = current_recipient.set(Address("c@example.org"))
    try:
        assert e(session(), tx)
    finally:
        current_recipient.reset(token)


def test_size_from_mail_parameter_then_from_message() -> None:
    e = Expression("size > 1000")
    tx = Transaction(Address("a@example.net", ["SIZE=5000"]))
    assert e(session(), tx)
    body = new_spool()
    body.write(b"hi\r\n")
    tx.message = Message([], body)
    assert not e(session(), tx)


def test_runtime_error_counts_as_false() -> None:
    e = Expression('re_match(helo, "x")')
    assert not e(session(helo="("), None)


def test_ip_in_helper() -> None:
    e = Expression('ip_in(client.ip, ["192.0.2.0/24", "2001:db8::/32"])')
    assert e(session(client_ip="192.0.2.200"), None)
    assert e(session(client_ip="2001:db8::5"), None)
    assert e(session(client_ip="::ffff:192.0.2.1"), None)
    assert not e(session(client_ip="198.51.100.1"), None)
    assert not e(session(client_ip="not-an-ip"), None)


def test_re_match_helper() -> None:
    e = Expression('re_match("(?i)^mx[0-9]+\\\\.", helo)')
    assert e(session(helo="MX12.example.net"), None)
    assert not e(session(helo="mail.example.net"), None)
    assert re_match("b", "abc") and not re_match("^b", "abc")


@given(st.ip_addresses(), st.ip_addresses(), st.integers(min_value=0, max_value=128))
def test_ip_in_agrees_with_ipaddress(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    base: ipaddress.IPv4Address | ipaddress.IPv6Address,
    prefix: int,
) -> None:
    prefix = min(prefix, base.max_prefixlen)
    net = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    expected = ip.version == net.version and ip in net
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        mapped = ip.ipv4_mapped
        expected = mapped.version == net.version and mapped in net
    assert ip_in(str(ip), [str(net)]) == expected


def test_size_is_the_mail_parameter_when_the_milter_withheld_the_content() -> None:
    e = Expression("size > 1000")
    tx = Transaction(Address("a@example.net", ["SIZE=5000"]))
    tx.message = Message([], new_spool(), withheld=frozenset({"body"}))
    assert e(session(), tx), "the empty body is not the message's size"


def message_from(*froms: str) -> Message:
    return Message([Header("From", f" {f}") for f in froms], new_spool())


@pytest.mark.parametrize(
    ("froms", "domain"),
    [
        ((), ""),
        (("Alice <alice@Mail.Example.org>",), "mail.example.org"),
        (("a@example.org, b@example.org",), ""),
        (("a@example.org", "b@example.net"), ""),
    ],
)
def test_header_from_is_the_one_from_address(froms: tuple[str, ...], domain: str) -> None:
    expr = Expression(f'header_from.domain == "{domain}"')
    tx = Transaction(Address("s@example.net"))
    assert Expression('header_from.address == ""')(session(), tx)  # before the data
    tx.message = message_from(*froms)
    assert expr(session(), tx)


def test_results_are_what_earlier_plugins_recorded() -> None:
    expr = Expression('"arc" in results && results.arc == "pass"')
    tx = Transaction(Address("s@example.net"))
    assert not expr(session(), tx)
    tx.set_result("arc", "fail")
    assert not expr(session(), tx)
    tx.set_result("arc", "pass")
    assert expr(session(), tx)


def test_a_result_named_without_checking_for_it_is_refused_at_load() -> None:
    with pytest.raises(ExpressionError, match="no key 'arc' in a sample session"):
        Expression('results.arc == "pass"')
