"""The dispatcher: order, first verdict wins, timeouts and on_error, concurrency, `when`."""

import asyncio
import time
from typing import Any

import pytest

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.message import Message
from mailgate.pipeline import (
    MESSAGE_PARTS,
    AuthenticationUnavailable,
    EnabledPlugin,
    ErrorPolicy,
    Pipeline,
    declared_reads,
)
from tests.core.transactions import small_transaction


class Recorder:
    """Answers a configured verdict at RCPT and records that it was asked."""

    def __init__(self, log: list[str], name: str, verdict: Verdict | None = None) -> None:
        self.log, self.name, self.verdict = log, name, verdict

    @hookimpl
    async def on_rcpt(self, recipient: Address) -> Verdict | None:
        self.log.append(self.name)
        return self.verdict


async def test_plugins_are_asked_in_confd_order_and_the_first_verdict_wins() -> None:
    log: list[str] = []
    plugins = [
        EnabledPlugin("a", Recorder(log, "a")),
        EnabledPlugin("b", Recorder(log, "b", Verdict.reject(550, "5.1.1", "No such user"))),
        EnabledPlugin("c", Recorder(log, "c", Verdict.reject(554, "5.7.1", "other"))),
    ]
    verdict = await Pipeline(plugins).rcpt(
        Session("192.0.2.1"), small_transaction(), Address("x@y")
    )
    assert log == ["a", "b"]
    assert verdict is not None and verdict.smtp_reply() == "550 5.1.1 No such user"


async def test_accept_ends_the_stage() -> None:
    log: list[str] = []
    plugins = [
        EnabledPlugin("a", Recorder(log, "a", Verdict.accept())),
        EnabledPlugin("b", Recorder(log, "b", Verdict.reject())),
    ]
    verdict = await Pipeline(plugins).rcpt(
        Session("192.0.2.1"), small_transaction(), Address("x@y")
    )
    assert log == ["a"]
    assert verdict == Verdict.accept()


class Hangs:
    @hookimpl
    async def on_mail(self) -> None:
        await asyncio.sleep(10)


class Raises:
    @hookimpl
    def on_mail(self) -> None:
        raise RuntimeError("boom")


@pytest.mark.parametrize("plugin", [Hangs(), Raises()])
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ErrorPolicy.TEMPFAIL, "451 4.3.0"),
        (ErrorPolicy.REJECT, "554 5.3.0"),
        (ErrorPolicy.ACCEPT, None),
    ],
)
async def test_failure_applies_the_plugins_own_policy(
    plugin: Any, policy: ErrorPolicy, expected: str | None
) -> None:
    pipeline = Pipeline([EnabledPlugin("p", plugin, timeout=0.05, on_error=policy)])
    tx = small_transaction()
    verdict = await pipeline.mail(Session("192.0.2.1"), tx)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.smtp_reply().startswith(expected)
    assert tx.results["p"].result == "error"


class OnlyTransaction:
    """Asks for a subset of the spec's arguments."""

    seen: Transaction | None = None

    @hookimpl
    def on_data(self, transaction: Transaction) -> None:
        OnlyTransaction.seen = transaction


async def test_an_implementation_gets_only_the_arguments_it_names() -> None:
    tx = small_transaction()
    await Pipeline([EnabledPlugin("p", OnlyTransaction())]).data(Session("192.0.2.1"), tx)
    assert OnlyTransaction.seen is tx


async def test_when_false_skips_the_plugin() -> None:
    log: list[str] = []
    plugin = EnabledPlugin(
        "a", Recorder(log, "a", Verdict.reject()), when=lambda s, t: s.client_ip == "192.0.2.9"
    )
    verdict = await Pipeline([plugin]).rcpt(
        Session("192.0.2.1"), small_transaction(), Address("x@y")
    )
    assert verdict is None and log == []


class SlowScanner:
    def __init__(self, name: str, delay: float, verdict: Verdict | None = None) -> None:
        self.name, self.delay, self.verdict = name, delay, verdict

    @hookimpl
    async def on_message(self, transaction: Transaction) -> Verdict | None:
        await asyncio.sleep(self.delay)
        transaction.add_header("X-Scanned-By", self.name)
        return self.verdict


async def test_concurrent_scanners_cost_the_slowest_not_the_sum() -> None:
    plugins = [
        EnabledPlugin("s1", SlowScanner("s1", 0.3), concurrent=True),
        EnabledPlugin("s2", SlowScanner("s2", 0.3), concurrent=True),
        EnabledPlugin("s3", SlowScanner("s3", 0.3), concurrent=True),
    ]
    tx = small_transaction()
    started = time.monotonic()
    assert await Pipeline(plugins).message(Session("192.0.2.1"), tx) is None
    assert time.monotonic() - started < 0.6
    assert tx.message is not None
    assert tx.message.get_all("X-Scanned-By") == ["s1", "s2", "s3"]


async def test_concurrent_changes_are_applied_in_confd_order_whoever_ends_first() -> None:
    plugins = [
        EnabledPlugin("slow", SlowScanner("slow", 0.2), concurrent=True),
        EnabledPlugin("fast", SlowScanner("fast", 0.0), concurrent=True),
    ]
    tx = small_transaction()
    await Pipeline(plugins).message(Session("192.0.2.1"), tx)
    assert tx.message is not None
    assert tx.message.get_all("X-Scanned-By") == ["slow", "fast"]


async def test_concurrent_group_verdict_is_the_first_in_confd_order() -> None:
    plugins = [
        EnabledPlugin(
            "a", SlowScanner("a", 0.1, Verdict.reject(554, "5.7.1", "virus")), concurrent=True
        ),
        EnabledPlugin(
            "b", SlowScanner("b", 0.0, Verdict.reject(550, "5.7.1", "spam")), concurrent=True
        ),
    ]
    verdict = await Pipeline(plugins).message(Session("192.0.2.1"), small_transaction())
    assert verdict is not None and verdict.text == "virus"


class HeaderCounter:
    """A sequential plugin: sees what the plugins before it did."""

    seen: list[str] = []

    @hookimpl
    def on_message(self, message: Message) -> None:
        HeaderCounter.seen = message.get_all("X-Scanned-By")


async def test_a_sequential_plugin_sees_the_message_as_earlier_plugins_left_it() -> None:
    plugins = [
        EnabledPlugin("s1", SlowScanner("s1", 0.0), concurrent=True),
        EnabledPlugin("counter", HeaderCounter()),
    ]
    await Pipeline(plugins).message(Session("192.0.2.1"), small_transaction())
    assert HeaderCounter.seen == ["s1"]


async def test_recipient_modifications_change_the_envelope() -> None:
    tx = small_transaction()
    tx.recipients = [Address("a@x.test"), Address("b@x.test")]
    tx.delete_recipient("A@x.test")
    tx.add_recipient("c@x.test", ("NOTIFY=NEVER",))
    tx.change_sender("bounce@x.test")
    assert [r.address for r in tx.recipients] == ["b@x.test", "c@x.test"]
    assert tx.recipients[1].params == ["NOTIFY=NEVER"]
    assert tx.sender.address == "bounce@x.test"
    assert len(tx.modifications) == 3


class Cleanup:
    calls: list[str] = []

    @hookimpl
    def on_disconnect(self) -> None:
        Cleanup.calls.append("disconnect")


async def test_disconnect_is_called_even_when_the_condition_is_false() -> None:
    Cleanup.calls = []
    plugin = EnabledPlugin("c", Cleanup(), when=lambda s, t: False)
    await Pipeline([plugin]).disconnect(Session("192.0.2.1"))
    assert Cleanup.calls == ["disconnect"]


def test_declared_reads_defaults_to_everything_and_refuses_nonsense() -> None:
    class Quiet:
        reads: frozenset[str] = frozenset()

    class Listed:
        reads = ["headers"]

    class Typo:
        reads = frozenset({"header"})

    class Word:
        reads = "body"

    assert declared_reads(object()) == MESSAGE_PARTS == frozenset({"headers", "body"})
    assert declared_reads(Quiet) == frozenset() and declared_reads(Quiet()) == frozenset()
    assert declared_reads(Listed) == frozenset({"headers"})
    with pytest.raises(ValueError, match="only 'headers' and 'body', not \\['header'\\]"):
        declared_reads(Typo)
    with pytest.raises(ValueError, match="a set of 'headers' and 'body', not 'body'"):
        declared_reads(Word)


def test_the_chain_reads_what_its_content_hooks_declare() -> None:
    class OnMessage:
        @hookimpl
        def on_message(self) -> None:
            """Nothing."""

    class OnHeaders:
        @hookimpl
        def on_headers(self) -> None:
            """Nothing."""

    class OnRcpt:
        @hookimpl
        def on_rcpt(self) -> None:
            """Nothing: its `reads` (the default, both) does not matter."""

    def reads(*plugins: EnabledPlugin) -> tuple[bool, bool]:
        pipeline = Pipeline(plugins)
        return pipeline.reads("headers"), pipeline.reads("body")

    nothing: frozenset[str] = frozenset()
    assert reads() == (False, False)
    assert reads(EnabledPlugin("r", OnRcpt())) == (False, False)
    assert reads(EnabledPlugin("m", OnMessage())) == (True, True)
    assert reads(EnabledPlugin("m", OnMessage(), reads=nothing)) == (False, False)
    assert reads(EnabledPlugin("m", OnMessage(), reads=frozenset({"body"}))) == (False, True)
    assert reads(EnabledPlugin("h", OnHeaders())) == (True, False), "on_headers has no body"
    assert reads(
        EnabledPlugin("a", OnMessage(), reads=nothing),
        EnabledPlugin("b", OnMessage(), reads=frozenset({"headers"})),
    ) == (True, False)


class BrokenDirectory:
    @hookimpl
    async def authenticate(self, login: str) -> bool | None:
        raise ConnectionError("directory down")


class Yes:
    @hookimpl
    def authenticate(self) -> bool:
        return True


async def test_a_failing_authenticator_is_not_a_wrong_password() -> None:
    pipeline = Pipeline([EnabledPlugin("dir", BrokenDirectory()), EnabledPlugin("yes", Yes())])
    with pytest.raises(AuthenticationUnavailable):
        await pipeline.authenticate(Session("192.0.2.1"), "PLAIN", "alice", "secret")


class Stages:
    """An async `on_rcpt` that works without waiting, then waits `wait` seconds (if any),
    keeping what happened to it."""

    def __init__(self, wait: float | None) -> None:
        self.wait = wait
        self.seen: list[str] = []

    @hookimpl
    async def on_rcpt(self, recipient: Address) -> Verdict | None:
        self.seen.append("first step")
        if self.wait is not None:
            try:
                await asyncio.sleep(self.wait)
            except asyncio.CancelledError:
                self.seen.append("cancelled")
                raise
            finally:
                self.seen.append("cleaned up")
        return Verdict.reject(550, "5.1.1", f"refused by {recipient.address}")


@pytest.mark.parametrize("wait", [None, 0.0, 0.01])
async def test_an_async_hook_answers_whether_or_not_it_waits(wait: float | None) -> None:
    plugin = Stages(wait)
    pipeline = Pipeline([EnabledPlugin("stages", plugin, timeout=1.0)])
    verdict = await pipeline.rcpt(Session("192.0.2.1"), small_transaction(), Address("x@e.org"))
    assert verdict is not None and verdict.text == "refused by x@e.org"
    assert plugin.seen == ["first step"] + ([] if wait is None else ["cleaned up"])


async def test_what_an_async_hook_waits_for_after_its_first_step_still_times_out() -> None:
    plugin = Stages(wait=5.0)
    pipeline = Pipeline(
        [EnabledPlugin("stages", plugin, timeout=0.05, on_error=ErrorPolicy.REJECT)]
    )
    started = time.monotonic()
    verdict = await pipeline.rcpt(Session("192.0.2.1"), small_transaction(), Address("x@e.org"))
    assert time.monotonic() - started < 1.0
    assert verdict is not None and (verdict.code, verdict.status) == (554, "5.3.0")
    assert plugin.seen == ["first step", "cancelled", "cleaned up"]


async def test_cancelling_the_session_reaches_an_async_hook_that_is_waiting() -> None:
    plugin = Stages(wait=5.0)
    pipeline = Pipeline([EnabledPlugin("stages", plugin, timeout=10.0)])
    task = asyncio.ensure_future(
        pipeline.rcpt(Session("192.0.2.1"), small_transaction(), Address("x@e.org"))
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert plugin.seen == ["first step", "cancelled", "cleaned up"]
