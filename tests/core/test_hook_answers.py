"""A hook that answers with the wrong type fails like one that raises: its own on_error applies."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.pipeline import (
    AuthenticationUnavailable,
    CallStatus,
    EnabledPlugin,
    ErrorPolicy,
    HookCall,
    Pipeline,
)
from tests.core.transactions import small_transaction


class AnswersText:
    """Gives a reply as text instead of a `Verdict`."""

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Any:
        return "550 no such user"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ErrorPolicy.TEMPFAIL, "451 4.3.0 Temporary local problem, try again later"),
        (ErrorPolicy.REJECT, "554 5.3.0 Local policy failure"),
        (ErrorPolicy.ACCEPT, None),
    ],
)
async def test_a_wrong_answer_applies_the_plugins_own_policy(
    policy: ErrorPolicy, expected: str | None
) -> None:
    pipeline = Pipeline([EnabledPlugin("texter", AnswersText(), on_error=policy)])
    session, tx = Session("192.0.2.1"), small_transaction()
    with structlog.testing.capture_logs() as logs:
        verdict = await pipeline.rcpt(session, tx, Address("bob@example.org"))
    assert (verdict.smtp_reply() if verdict is not None else None) == expected
    if verdict is not None:
        assert verdict.plugin == "texter"
    [line] = [e for e in logs if e["event"] == "plugin failed"]
    reason = "returned '550 no such user' (str), not None or Verdict"
    assert (line["plugin"], line["hook"], line["reason"]) == ("texter", "on_rcpt", reason)
    assert line["policy"] == policy.value
    assert tx.results["texter"].result == "error"
    assert session.counters["plugin_errors"] == 1


async def test_observers_see_a_wrong_answer_as_a_failed_call() -> None:
    calls: list[HookCall] = []
    pipeline = Pipeline(
        [EnabledPlugin("texter", AnswersText())], [lambda call, s, t: calls.append(call)]
    )
    await pipeline.rcpt(Session("192.0.2.1"), small_transaction(), Address("bob@example.org"))
    [call] = calls
    assert (call.plugin, call.hook, call.status) == ("texter", "on_rcpt", CallStatus.FAILED)
    assert call.error.startswith("returned '550 no such user' (str)")


class ScannerAnswersNumber:
    @hookimpl
    async def on_message(self, transaction: Transaction) -> Any:
        return 5.0  # a spam score, not a verdict


class CleanScanner:
    @hookimpl
    async def on_message(self, transaction: Transaction) -> None:
        transaction.add_header("X-Clean", "yes")


async def test_a_wrong_answer_among_concurrent_scanners_is_that_scanners_failure() -> None:
    plugins = [
        EnabledPlugin(
            "scorer", ScannerAnswersNumber(), concurrent=True, on_error=ErrorPolicy.REJECT
        ),
        EnabledPlugin("clean", CleanScanner(), concurrent=True),
    ]
    tx = small_transaction()
    verdict = await Pipeline(plugins).message(Session("192.0.2.1"), tx)
    assert verdict is not None and verdict.smtp_reply() == "554 5.3.0 Local policy failure"
    assert verdict.plugin == "scorer"
    assert tx.results["scorer"].result == "error"


class Rejects:
    @hookimpl
    async def on_message(self) -> Verdict:
        return Verdict.reject(554, "5.7.1", "virus")


async def test_a_concurrent_verdict_is_named_after_the_scanner_that_gave_it() -> None:
    plugins = [
        EnabledPlugin("clamav", Rejects(), concurrent=True),
        EnabledPlugin("spamassassin", CleanScanner(), concurrent=True),
    ]
    verdict = await Pipeline(plugins).message(Session("192.0.2.1"), small_transaction())
    assert verdict is not None and verdict.plugin == "clamav"


class YesAsText:
    @hookimpl
    def authenticate(self, login: str) -> Any:
        return "yes"


async def test_authenticate_answering_anything_but_true_false_none_is_unavailable() -> None:
    pipeline = Pipeline([EnabledPlugin("auth", YesAsText())])
    with pytest.raises(AuthenticationUnavailable):
        await pipeline.authenticate(Session("192.0.2.1"), "PLAIN", "alice", "secret")


class ChattyObserver:
    @hookimpl
    def on_outcome(self, verdict: Verdict) -> Any:
        return "noted"

    @hookimpl
    def on_disconnect(self) -> Any:
        return 1


async def test_what_outcome_and_disconnect_return_is_ignored() -> None:
    session = Session("192.0.2.1")
    pipeline = Pipeline([EnabledPlugin("chatty", ChattyObserver())])
    with structlog.testing.capture_logs() as logs:
        await pipeline.outcome(session, small_transaction(), Verdict.accept())
        await pipeline.disconnect(session)
    assert [e for e in logs if e["event"] == "plugin failed"] == []
