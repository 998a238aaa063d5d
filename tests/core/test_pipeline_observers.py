"""Observers see every plugin call: its status, time, answer and the changes it made."""

from __future__ import annotations

import asyncio

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.modifications import AddHeader, AddRecipient
from mailgate.pipeline import CallStatus, EnabledPlugin, ErrorPolicy, HookCall, Pipeline
from tests.core.transactions import small_transaction


class Seen:
    """An observer that keeps every call it is told about."""

    def __init__(self) -> None:
        self.calls: list[HookCall] = []

    def __call__(self, call: HookCall, session: Session, tx: Transaction | None) -> None:
        self.calls.append(call)


class Tagger:
    """Adds a header at end of data (after a short scan, when `delay`)."""

    def __init__(self, tag: str, delay: float = 0.0) -> None:
        self.tag, self.delay = tag, delay

    @hookimpl
    async def on_message(self, transaction: Transaction) -> None:
        await asyncio.sleep(self.delay)
        transaction.add_header(f"X-{self.tag}", "yes")


class Refuser:
    """Refuses every recipient after adding one."""

    @hookimpl
    def on_rcpt(self, transaction: Transaction, recipient: Address) -> Verdict:
        transaction.add_recipient("copy@example.org")
        return Verdict.reject(550, "5.1.1", "No such user")


class Broken:
    """Fails at RCPT; hangs at end of data."""

    @hookimpl
    def on_rcpt(self) -> None:
        raise RuntimeError("database down")

    @hookimpl
    async def on_message(self) -> None:
        await asyncio.sleep(5)


async def test_an_answer_and_its_changes_are_reported_per_call() -> None:
    seen = Seen()
    pipeline = Pipeline([EnabledPlugin("refuser", Refuser())], observers=[seen])
    tx = small_transaction()
    verdict = await pipeline.rcpt(Session("192.0.2.1"), tx, Address("x@example.com"))
    (call,) = seen.calls
    assert (call.plugin, call.hook, call.status) == ("refuser", "on_rcpt", CallStatus.OK)
    assert call.result == verdict == Verdict.reject(550, "5.1.1", "No such user")
    assert call.modifications == (AddRecipient("copy@example.org", ()),)


async def test_a_call_is_timed_while_it_runs() -> None:
    class Slow:
        @hookimpl
        async def on_rcpt(self) -> None:
            await asyncio.sleep(0.05)

    seen = Seen()
    pipeline = Pipeline([EnabledPlugin("slow", Slow())], observers=[seen])
    await pipeline.rcpt(Session("192.0.2.1"), small_transaction(), Address("x@example.com"))
    (call,) = seen.calls
    assert 0.04 <= call.seconds < 1  # uvloop's timers round to the millisecond, either way


async def test_a_failure_reports_why_and_a_false_when_reports_a_skip() -> None:
    seen = Seen()
    plugins = [
        EnabledPlugin("skipped", Refuser(), when=lambda session, tx: False),
        EnabledPlugin("broken", Broken(), timeout=0.05, on_error=ErrorPolicy.ACCEPT),
    ]
    pipeline = Pipeline(plugins, observers=[seen])
    tx = small_transaction()
    assert await pipeline.rcpt(Session("192.0.2.1"), tx, Address("x@example.com")) is None
    assert await pipeline.message(Session("192.0.2.1"), tx) is None
    skipped, failed, timed_out = seen.calls
    assert (skipped.plugin, skipped.status, skipped.seconds) == ("skipped", CallStatus.SKIPPED, 0)
    assert (failed.hook, failed.status) == ("on_rcpt", CallStatus.FAILED)
    assert failed.error == "RuntimeError: database down"
    assert (timed_out.hook, timed_out.error) == ("on_message", "timed out after 0.05s")
    assert 0.04 <= timed_out.seconds < 1  # the loop's timers have millisecond resolution


async def test_concurrent_scanners_each_report_their_own_changes() -> None:
    seen = Seen()
    plugins = [
        EnabledPlugin("slow", Tagger("Slow", delay=0.05), concurrent=True),
        EnabledPlugin("fast", Tagger("Fast"), concurrent=True),
    ]
    tx = small_transaction()
    await Pipeline(plugins, observers=[seen]).message(Session("192.0.2.1"), tx)
    by_plugin = {call.plugin: call for call in seen.calls}
    assert by_plugin["slow"].modifications == (AddHeader("X-Slow", "yes"),)
    assert by_plugin["fast"].modifications == (AddHeader("X-Fast", "yes"),)
    assert [call.plugin for call in seen.calls] == ["fast", "slow"], "told as each one ends"


async def test_a_failing_observer_does_not_change_the_answer() -> None:
    def broken(call: HookCall, session: Session, tx: Transaction | None) -> None:
        raise ValueError("observer bug")

    seen = Seen()
    pipeline = Pipeline([EnabledPlugin("refuser", Refuser())], observers=[broken, seen])
    verdict = await pipeline.rcpt(
        Session("192.0.2.1"), small_transaction(), Address("x@example.com")
    )
    assert verdict is not None and verdict.code == 550
    assert len(seen.calls) == 1, "later observers are still told"
