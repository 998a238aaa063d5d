"""sender_auth: which MAIL FROM addresses an authenticated login owns."""

from __future__ import annotations

from mailgate.plugins.sender_auth import SenderAuth, SenderAuthSettings
from mailgate.session import Address, Session
from mailgate.verdict import Verdict, VerdictKind


def session(login: str = "") -> Session:
    return Session(client_ip="192.0.2.1", auth_login=login)


def test_unauthenticated_sessions_are_not_affected() -> None:
    assert SenderAuth().on_mail(session(), Address("anyone@example.org")) is None


def test_a_login_owns_itself_and_its_subaddresses() -> None:
    plugin = SenderAuth()
    assert plugin.owns("alice@example.org", "Alice@EXAMPLE.org")
    assert plugin.owns("alice@example.org", "alice+lists@example.org")
    assert not plugin.owns("alice@example.org", "bob@example.org")
    assert not plugin.owns("alice@example.org", "alice@example.org.evil.test")
    assert not SenderAuth(SenderAuthSettings(subaddress_delimiter="")).owns(
        "alice@example.org", "alice+x@example.org"
    )


def test_a_bare_login_owns_its_name_in_the_configured_domains() -> None:
    plugin = SenderAuth(SenderAuthSettings(domains=["example.org"]))
    assert plugin.owns("alice", "alice@example.org")
    assert not plugin.owns("alice", "alice@example.net")


def test_allowed_lists_addresses_and_domains_per_login_and_for_everyone() -> None:
    plugin = SenderAuth(
        SenderAuthSettings(
            allowed={
                "alice@example.org": ["@example.net", "info@example.com"],
                "*": ["noreply@x.test"],
            }
        )
    )
    assert plugin.owns("alice@example.org", "anyone@example.net")
    assert plugin.owns("alice@example.org", "info@example.com")
    assert not plugin.owns("alice@example.org", "sales@example.com")
    assert plugin.owns("bob@example.org", "noreply@x.test")
    assert not plugin.owns("bob@example.org", "anyone@example.net")


def test_refusal_names_the_login_and_null_sender_is_allowed() -> None:
    plugin = SenderAuth()
    verdict = plugin.on_mail(session("alice@example.org"), Address("ceo@example.org"))
    assert isinstance(verdict, Verdict) and verdict.kind is VerdictKind.REJECT
    assert (verdict.code, verdict.status) == (553, "5.7.1")
    assert verdict.text == "Sender address not owned by user alice@example.org"
    assert plugin.on_mail(session("alice@example.org"), Address("")) is None
    strict = SenderAuth(SenderAuthSettings(allow_null_sender=False))
    assert strict.on_mail(session("alice@example.org"), Address("")) is not None
