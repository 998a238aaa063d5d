"""The spamassassin plugin against a real spamd, over TCP and a unix socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate import VerdictKind
from mailgate.config import ConfigError, load_settings
from mailgate.pipeline import ErrorPolicy, Pipeline
from mailgate.plugins.spamassassin import SpamassassinPlugin, SpamassassinSettings, SpamdError
from mailgate.plugins.spamassassin.plugin import fold_status
from mailgate.plugins.spamassassin.spamd_client import parse_symbols_response
from tests.peers.ports import free_port
from tests.peers.spamd import Spamd
from tests.plugins import messages as m

FORGED = b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-100.0\r\nX-Spam-Score: -100.0\r\n"


def spamassassin(servers: list[str], **settings: object) -> SpamassassinPlugin:
    """The plugin with settings as a conf.d file would give them."""
    table = {"servers": servers, **settings}
    return SpamassassinPlugin(load_settings(SpamassassinSettings, table, source="60-sa.toml"))


@pytest.fixture(params=["tcp", "unix"])
def spamd_address(request: pytest.FixtureRequest, spamd: Spamd) -> str:
    """Each test that takes this runs once over TCP and once over the unix socket."""
    return spamd.tcp_address if request.param == "tcp" else spamd.unix_address


async def test_gtube_is_rejected(spamd_address: str) -> None:
    verdict, tx = await m.run(m.gtube(), m.enabled("spamassassin", spamassassin([spamd_address])))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert (verdict.code, verdict.status) == (554, "5.7.1")
    result = tx.results["spamassassin"]
    assert result.result == "spam" and result.score == pytest.approx(1000, abs=10)
    assert "GTUBE" in result.details["rules"]
    assert result.details["action"] == "reject"


async def test_ham_gets_status_headers_and_no_flag(spamd_address: str) -> None:
    verdict, tx = await m.run(m.ham(), m.enabled("spamassassin", spamassassin([spamd_address])))
    assert verdict is None
    assert tx.results["spamassassin"].result == "ham"
    assert tx.message is not None
    status = tx.message.get("X-Spam-Status") or ""
    assert status.startswith("No, score=") and "required=5.0" in status
    assert tx.message.get("X-Spam-Score") is not None
    assert tx.message.get("X-Spam-Flag") is None
    assert tx.message.get("Subject") == "Hello"


async def test_forged_spam_headers_are_removed(spamd: Spamd) -> None:
    raw = m.plain(b"hello\r\n", extra_headers=FORGED)
    verdict, tx = await m.run(raw, m.enabled("spamassassin", spamassassin([spamd.tcp_address])))
    assert verdict is None
    assert tx.message is not None
    assert tx.message.get_all("X-Spam-Flag") == []
    assert len(tx.message.get_all("X-Spam-Status")) == 1
    assert "-100" not in (tx.message.get("X-Spam-Status") or "")
    assert tx.message.get_all("X-Spam-Score") != ["-100.0"]


async def test_tagged_mail_gets_flag_and_subject_tag(spamd: Spamd) -> None:
    plugin = spamassassin([spamd.unix_address], tag_threshold=-50.0, subject_tag="[SPAM]")
    verdict, tx = await m.run(m.ham(), m.enabled("spamassassin", plugin))
    assert verdict is None
    assert tx.message is not None
    assert tx.message.get("X-Spam-Flag") == "YES"
    assert (tx.message.get("X-Spam-Status") or "").startswith("Yes, score=")
    assert tx.message.get("Subject") == "[SPAM] Hello"
    assert tx.results["spamassassin"].details["action"] == "tag"


async def test_quarantine_threshold(spamd: Spamd) -> None:
    plugin = spamassassin([spamd.tcp_address], quarantine_threshold=100.0, reject_threshold=5000.0)
    verdict, tx = await m.run(m.gtube(), m.enabled("spamassassin", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.QUARANTINE
    assert tx.message is not None and tx.message.get("X-Spam-Flag") == "YES"


async def test_spamd_user_is_sent(spamd: Spamd) -> None:
    plugin = spamassassin([spamd.tcp_address], user="mailgate-test-user")
    verdict, _ = await m.run(m.gtube(), m.enabled("spamassassin", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert "for mailgate-test-user:" in spamd.log.read_text()


async def test_message_over_max_size_is_skipped_and_says_so(spamd: Spamd) -> None:
    raw = m.plain(b"hello\r\n", extra_headers=FORGED)
    plugin = spamassassin([spamd.tcp_address], max_size=100)
    verdict, tx = await m.run(raw, m.enabled("spamassassin", plugin))
    assert verdict is None
    assert tx.results["spamassassin"].result == "skipped"
    assert "max_size" in tx.results["spamassassin"].reason
    assert tx.message is not None and tx.message.get("X-Spam-Status") is None


async def test_spamd_down_fails_closed_by_default() -> None:
    plugin = spamassassin([f"127.0.0.1:{free_port()}", "unix:/nonexistent/spamd.sock"])
    verdict, tx = await m.run(m.gtube(), m.enabled("spamassassin", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL
    assert tx.results["spamassassin"].result == "error"


async def test_spamd_down_fails_open_with_on_error_accept_and_still_strips_forgeries() -> None:
    plugin = spamassassin([f"127.0.0.1:{free_port()}"])
    raw = m.plain(b"hello\r\n", extra_headers=FORGED)
    verdict, tx = await m.run(raw, m.enabled("spamassassin", plugin, on_error=ErrorPolicy.ACCEPT))
    assert verdict is None
    assert tx.message is not None and tx.message.get("X-Spam-Flag") is None


async def test_failover_to_the_next_spamd(spamd: Spamd) -> None:
    plugin = spamassassin([f"127.0.0.1:{free_port()}", spamd.unix_address])
    verdict, tx = await m.run(m.gtube(), m.enabled("spamassassin", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert tx.results["spamassassin"].details["server"] == spamd.unix_address


async def test_thresholds_can_depend_on_the_session(spamd: Spamd) -> None:
    # Stricter for unauthenticated clients: their ham is tagged, authenticated ham is not.
    plugin = spamassassin(
        [spamd.tcp_address],
        tag_threshold=[{"if": "!authenticated", "then": -50.0}, {"else": 5.0}],
    )
    session, tx = m.make_transaction(m.ham())
    await Pipeline([m.enabled("spamassassin", plugin)]).message(session, tx)
    assert tx.results["spamassassin"].details["action"] == "tag"
    session, tx = m.make_transaction(m.ham())
    session.auth_login = "alice"
    await Pipeline([m.enabled("spamassassin", plugin)]).message(session, tx)
    assert tx.results["spamassassin"].details["action"] == "none"


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="servers"):
        spamassassin(["localhost"])
    with pytest.raises(ConfigError, match="reject_threshold"):
        spamassassin(["127.0.0.1:783"], reject_threshold="high")


def test_symbols_response_is_parsed() -> None:
    raw = (
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
        b"GTUBE,NO_RECEIVED,NO_RELAYS"
    )
    report = parse_symbols_response(raw)
    assert (report.score, report.threshold) == (1000.0, 5.0)
    assert report.rules == ["GTUBE", "NO_RECEIVED", "NO_RELAYS"]


def test_spamd_error_answers_raise() -> None:
    with pytest.raises(SpamdError):
        parse_symbols_response(b"SPAMD/1.0 76 Bad header line: (EOF)\r\n\r\n")
    with pytest.raises(SpamdError):
        parse_symbols_response(b"")
    with pytest.raises(SpamdError):
        parse_symbols_response(b"garbage")


@given(st.lists(st.from_regex(r"[A-Z][A-Z0-9_]{0,30}", fullmatch=True), max_size=40))
def test_folded_status_unfolds_to_the_same_value(rules: list[str]) -> None:
    value = f"Yes, score=7.0 required=5.0 tests={','.join(rules) or 'none'}"
    folded = fold_status(value)
    assert folded.replace("\r\n\t", "") == value
    assert all(len(line) <= 100 for line in folded.split("\r\n"))
