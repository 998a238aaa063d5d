"""`routing_reason`: which recipient addresses a lenient downstream may route elsewhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.routing import routing_reason, valid_domain

ATEXT = st.sampled_from(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~."
)
LOCAL = st.text(ATEXT, min_size=1, max_size=30)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("victim%evil.test@mx.example.org", "percent hack"),
        ("evil.test!victim@example.org", "bang path"),
        ("victim@evil.test@example.org", "second @"),
        ('"victim@evil.test"@example.org', "second @"),
        ('"victim%evil.test"@example.org', "percent hack"),
        ('"vic\\tim@evil"@example.org', "second @"),
        ("victim\\@evil.test@example.org", "special characters"),
        ("victim(comment)@example.org", "special characters"),
        ('"unbalanced@example.org', "special characters"),
        ('"a"b"@example.org', "special characters"),
        ('"trailing\\"@example.org', "special characters"),
        ("victim@evil.test%example.org", "domain"),
        ("victim@example.org(x)", "domain"),
        ("victim@-example.org", "domain"),
        ("victim@exa mple.org", "domain"),
        ("victim%evil.test", "percent hack"),
    ],
)
def test_routing_forms_are_named(address: str, reason: str) -> None:
    found = routing_reason(address)
    assert found is not None and reason in found, found


@pytest.mark.parametrize(
    "address",
    [
        "user@example.org",
        "user.name+tag@mx.example.org.",
        '"john smith"@example.org',
        '"quoted\\"quote"@example.org',
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "jösé@bücher.example",
        "postmaster",
        "",
    ],
)
def test_plain_addresses_carry_no_routing(address: str) -> None:
    assert routing_reason(address) is None


@given(LOCAL, DOMAIN)
def test_an_atext_local_part_routes_exactly_when_it_has_percent_or_bang(
    local: str, domain: str
) -> None:
    reason = routing_reason(f"{local}@{domain}")
    assert (reason is not None) == ("%" in local or "!" in local)


@given(st.text(max_size=40), DOMAIN)
def test_whatever_the_local_part_an_at_percent_or_bang_inside_is_routing(
    local: str, domain: str
) -> None:
    unquoted = local.replace("\\", "").replace('"', "")
    if any(c in unquoted for c in "@%!"):
        assert routing_reason(f"{local}@{domain}") is not None
        assert routing_reason(f'"{local}"@{domain}') is not None


@given(st.text(max_size=60))
def test_never_raises_and_a_valid_domain_has_no_specials(text: str) -> None:
    routing_reason(text)
    if valid_domain(text):
        assert not any(c in text for c in '@%!()<>,;:\\" ') or text.startswith("[")
