"""The pipeline: calls each hook on the enabled plugins, in `conf.d` order, and decides.

pluggy registers and validates the plugins; it cannot await coroutines, so the calls are made
here. Each call gets the plugin's timeout and, when it raises, times out or answers with the
wrong type, the plugin's own `on_error` policy. Concurrent scanners at the end of data run at
the same time.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import time
import types
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from mailgate import hookspecs
from mailgate.directory import DirectoryUnavailable, Entry, Question, active_lookup
from mailgate.expressions import current_recipient
from mailgate.logging import get_logger
from mailgate.message import Header
from mailgate.modifications import Modification
from mailgate.plugin import PROJECT
from mailgate.session import Address, Session, Transaction, pending_modifications
from mailgate.verdict import Verdict, VerdictKind

if TYPE_CHECKING:
    from mailgate.authentication_results import AuthenticationResultsSettings
    from mailgate.iprev import ClientNames

log = get_logger("mailgate.pipeline")


class ErrorPolicy(enum.Enum):
    """What a plugin's failure (exception, timeout, wrong type of answer) turns into."""

    TEMPFAIL = "tempfail"
    """Answer 451 4.3.0: the client tries again later (the safe default)."""
    REJECT = "reject"
    """Answer 554 5.3.0."""
    ACCEPT = "accept"
    """Go on as if the plugin had said nothing (fail open)."""


class Condition(Protocol):
    """A compiled `when` expression."""

    def __call__(self, session: Session, transaction: Transaction | None) -> bool: ...


MESSAGE_PARTS = frozenset({"headers", "body"})
"""What a plugin may declare it reads (its class attribute ``reads``); the default is both."""


def declared_reads(plugin: object) -> frozenset[str]:
    """The parts of the message `plugin` (a plugin class or instance) says its hooks read.

    ``reads`` is a class attribute: a set of ``"headers"`` and ``"body"``; a plugin without one
    reads both. Raises `ValueError` for anything else (a string, an unknown part).
    """
    value: object = getattr(plugin, "reads", MESSAGE_PARTS)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"reads must be a set of 'headers' and 'body', not {value!r}")
    parts = frozenset(value)
    unknown = parts - MESSAGE_PARTS
    if unknown:
        raise ValueError(
            f"reads may hold only 'headers' and 'body', not {sorted(map(str, unknown))}"
        )
    return parts


@dataclass(slots=True)
class EnabledPlugin:
    """One plugin as enabled by one `conf.d` file."""

    name: str
    instance: object
    when: Condition | None = None
    timeout: float = 30.0
    on_error: ErrorPolicy = ErrorPolicy.TEMPFAIL
    concurrent: bool = False
    source: str = ""
    reads: frozenset[str] = MESSAGE_PARTS
    """The parts of the message its `on_headers`/`on_message` read (the class's ``reads``)."""


@dataclass(slots=True)
class _Call:
    plugin: EnabledPlugin
    hook: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    is_async: bool


class CallStatus(enum.Enum):
    """How one plugin call went."""

    OK = "ok"
    """The plugin answered (`HookCall.result` is its answer)."""
    SKIPPED = "skipped"
    """Its `when` expression was false: not called."""
    FAILED = "failed"
    """It raised or timed out; its `on_error` policy applied (`HookCall.error` says why)."""


@dataclass(frozen=True, slots=True)
class HookCall:
    """One call of one plugin's hook, as observers see it (for metrics, `mailgate try`)."""

    plugin: str
    """The plugin's name in the chain (its entry-point name, or ``name:file-stem``)."""
    hook: str
    """``on_connect`` ... ``on_disconnect``, or ``authenticate``."""
    status: CallStatus
    seconds: float
    """Wall time of the call (0 when skipped)."""
    result: Any = None
    """What the plugin returned: a `Verdict`, None, or for `authenticate` True/False/None."""
    error: str = ""
    """Why it failed (``TimeoutError``: ``timed out after 2s``; else the exception)."""
    modifications: tuple[Modification, ...] = ()
    """The changes this call made to the transaction, in order."""


Observer = Callable[[HookCall, Session, Transaction | None], None]
"""Told about every plugin call, after it returns; must be quick and must not raise."""


@dataclass(slots=True)
class _Outcome:
    verdict: Verdict | None = None
    modifications: list[Modification] = field(default_factory=list)


class AuthenticationUnavailable(Exception):
    """An `authenticate` plugin failed (raised or timed out): no answer, not a wrong password."""


_ANSWERS: dict[str, tuple[type, ...]] = {"authenticate": (bool,), "directory": (Entry,)}
"""What each hook may answer besides None: a `Verdict`, unless listed here."""
_ANSWER_IGNORED = frozenset({"on_rcpt_refused", "on_outcome", "on_disconnect"})


def wrong_answer(hook: str, result: object) -> str:
    """Why `result` is not an answer `hook` may give (empty: it is one)."""
    if result is None or hook in _ANSWER_IGNORED:
        return ""
    allowed = _ANSWERS.get(hook, (Verdict,))
    if isinstance(result, allowed):
        return ""
    names = " or ".join(a.__name__ for a in allowed)
    text = repr(result)
    shown = text if len(text) <= 60 else text[:57] + "..."
    return f"returned {shown} ({type(result).__name__}), not None or {names}"


def error_verdict(policy: ErrorPolicy) -> Verdict | None:
    """The verdict a plugin failure becomes under `policy` (None: go on)."""
    if policy is ErrorPolicy.TEMPFAIL:
        return Verdict.tempfail(451, "4.3.0", "Temporary local problem, try again later")
    if policy is ErrorPolicy.REJECT:
        return Verdict.reject(554, "5.3.0", "Local policy failure")
    return None


def _modification_list(tx: Transaction | None) -> list[Modification]:
    """Where a plugin call's changes go: the concurrent group's own list, or the transaction's."""
    pending = pending_modifications.get()
    if pending is not None:
        return pending
    return tx.modifications if tx is not None else []


def _made_so_far(tx: Transaction | None) -> int:
    return len(_modification_list(tx))


def _made_since(tx: Transaction | None, before: int) -> tuple[Modification, ...]:
    return tuple(_modification_list(tx)[before:])


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Go on with `coro` after its first step, which yielded `waiting_on` (what awaiting it
    would have done had it not been started: ``yield from`` by hand, throws included)."""
    message = waiting_on
    while True:
        try:
            sent = yield message
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                message = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                message = coro.send(sent)
            except StopIteration as done:
                return done.value


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows mailgate's hook specifications."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


class Pipeline:
    """The plugin chain of one configuration. Ingress modules call one method per stage.

    A new configuration (SIGHUP) builds a new `Pipeline`; sessions already running keep the one
    they started with.
    """

    def __init__(
        self, plugins: Sequence[EnabledPlugin], observers: Sequence[Observer] = ()
    ) -> None:
        self.plugins = list(plugins)
        self.observers: list[Observer] = list(observers)
        """Called with a `HookCall` after every plugin call (see `HookCall`)."""
        self.client_names: ClientNames | None = None
        """Names SMTP clients by forward-confirmed reverse DNS at connect (``[dns]
        reverse_lookups``); None: no lookups. The loader sets it with the configuration's."""
        self.authentication_results: AuthenticationResultsSettings | None = None
        """The configuration's ``[authentication_results]``, which the flow applies at the end
        of data; None: the header is neither added nor checked."""
        self.pm = new_plugin_manager()
        for p in self.plugins:
            self.pm.register(p.instance, name=p.name)
        self.pm.check_pending()
        self._calls: dict[str, list[_Call]] = {}
        for hook_name in (
            n for n in dir(hookspecs) if n.startswith(("on_", "authenticate", "directory"))
        ):
            self._calls[hook_name] = self._collect(hook_name)
        self._lookup = self.directory if self._calls["directory"] else None
        """What `mailgate.directory.ask` calls during this chain's hooks (None: no backend)."""

    def _collect(self, hook_name: str) -> list[_Call]:
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook_name)
        by_plugin = {id(impl.plugin): impl for impl in caller.get_hookimpls()}
        calls = []
        for p in self.plugins:
            impl = by_plugin.get(id(p.instance))
            if impl is not None:
                fn = impl.function
                calls.append(
                    _Call(p, hook_name, fn, tuple(impl.argnames), inspect.iscoroutinefunction(fn))
                )
        return calls

    def implements(self, hook_name: str) -> bool:
        """True if some enabled plugin implements `hook_name` (ingress may skip work if not)."""
        return bool(self._calls.get(hook_name))

    def answers(self, hook_name: str, ingress: str) -> bool:
        """True if some plugin's `hook_name` may answer (give a verdict) for sessions that come
        in through `ingress`: one that implements it and does not say otherwise with its
        optional ``answers(hook, ingress)`` method. The milter listener asks the MTA not to
        wait for a reply at a step where this is False."""
        for call in self._calls.get(hook_name, ()):
            says = getattr(call.plugin.instance, "answers", None)
            if says is None or says(hook_name, ingress):
                return True
        return False

    def reads(self, part: str) -> bool:
        """True if some plugin whose hooks see the message reads `part` of it.

        `part` is ``"headers"`` (read by `on_headers` or `on_message`) or ``"body"`` (by
        `on_message`; `on_headers` comes before it). When this is False an ingress that can
        (the milter listener) does not fetch that part, and plugins see it empty.
        """
        if part == "headers" and self.authentication_results is not None:
            return True  # forged Authentication-Results are found in them
        hooks = ("on_message",) if part == "body" else ("on_headers", "on_message")
        return any(part in call.plugin.reads for hook in hooks for call in self._calls[hook])

    # -- one call --------------------------------------------------------------------------------

    async def _invoke(
        self,
        call: _Call,
        kwargs: dict[str, Any],
        session: Session,
        tx: Transaction | None,
        *,
        always: bool = False,
    ) -> tuple[bool, Any]:
        """Call one plugin; return (ok, result). A failure is logged and counted.

        An answer of the wrong type for the hook (see `wrong_answer`) is a failure too.

        `when` gates decisions only: with `always`, a plugin is called whatever its `when`
        says, so it can release what it holds (a milter connection, a counter).
        """
        p = call.plugin
        if not always and p.when is not None and not p.when(session, tx):
            if self.observers:
                self._observe(HookCall(p.name, call.hook, CallStatus.SKIPPED, 0.0), session, tx)
            return True, None
        args = {k: kwargs[k] for k in call.argnames}
        made = _made_so_far(tx) if self.observers else 0
        started = time.perf_counter()
        try:
            if call.is_async:
                # The first step runs at once: a hook that never waits (answered from a
                # cache) needs no timer, ~4 µs a call. Only what waits can time out.
                coro = call.function(**args)
                try:
                    waiting_on = coro.send(None)
                except StopIteration as done:
                    result = done.value
                else:
                    async with asyncio.timeout(p.timeout):
                        result = await _resumed(coro, waiting_on)
            else:
                result = call.function(**args)
                if inspect.isawaitable(result):
                    async with asyncio.timeout(p.timeout):
                        result = await result
        except TimeoutError:
            why = f"timed out after {p.timeout:g}s"
            self._failed(call, session, tx, why, started)
            self._report_failure(call, why, started, made, session, tx)
            return False, None
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            self._failed(call, session, tx, why, started, exc)
            self._report_failure(call, why, started, made, session, tx)
            return False, None
        why = wrong_answer(call.hook, result)
        if why:
            self._failed(call, session, tx, why, started)
            self._report_failure(call, why, started, made, session, tx)
            return False, None
        if self.observers:
            seconds = time.perf_counter() - started
            mods = _made_since(tx, made)
            self._observe(
                HookCall(p.name, call.hook, CallStatus.OK, seconds, result, "", mods), session, tx
            )
        return True, result

    def _report_failure(
        self,
        call: _Call,
        why: str,
        started: float,
        made: int,
        session: Session,
        tx: Transaction | None,
    ) -> None:
        if self.observers:
            seconds = time.perf_counter() - started
            failure = HookCall(
                call.plugin.name,
                call.hook,
                CallStatus.FAILED,
                seconds,
                error=why,
                modifications=_made_since(tx, made),
            )
            self._observe(failure, session, tx)

    def _observe(self, call: HookCall, session: Session, tx: Transaction | None) -> None:
        for observer in self.observers:
            try:
                observer(call, session, tx)
            except Exception:
                log.exception("pipeline observer failed", observer=repr(observer))

    @staticmethod
    def _failed(
        call: _Call,
        session: Session,
        tx: Transaction | None,
        why: str,
        started: float,
        exc: BaseException | None = None,
    ) -> None:
        p = call.plugin
        session.count("plugin_errors")
        if tx is not None:
            tx.set_result(p.name, "error", reason=why)
        log.error(
            "plugin failed",
            plugin=p.name,
            hook=call.hook,
            reason=why,
            policy=p.on_error.value,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
            exc_info=exc,
        )

    async def _decide(
        self, hook_name: str, session: Session, tx: Transaction | None, **kwargs: Any
    ) -> Verdict | None:
        calls = self._calls[hook_name]
        if not calls:
            return None
        active_lookup.set(self._lookup)
        kwargs["session"] = session
        kwargs["transaction"] = tx
        for call in calls:
            ok, result = await self._invoke(call, kwargs, session, tx)
            verdict = result if ok else error_verdict(call.plugin.on_error)
            if verdict is not None:
                return self._checked(call.plugin, verdict)
        return None

    @staticmethod
    def _checked(p: EnabledPlugin, verdict: object) -> Verdict:
        if not isinstance(verdict, Verdict):
            raise TypeError(f"plugin {p.name} returned {verdict!r}, not a Verdict or None")
        return verdict if verdict.plugin else replace(verdict, plugin=p.name)

    # -- stages ----------------------------------------------------------------------------------

    async def connect(self, session: Session) -> Verdict | None:
        """Run `on_connect`."""
        return await self._decide("on_connect", session, None)

    async def helo(self, session: Session, name: str) -> Verdict | None:
        """Run `on_helo`."""
        return await self._decide("on_helo", session, None, name=name)

    async def authenticate(
        self, session: Session, mechanism: str, login: str, secret: str
    ) -> bool | None:
        """Run `authenticate` until a plugin gives a True/False answer.

        Raises `AuthenticationUnavailable` when a plugin fails: the client should hear a
        temporary failure, and no later plugin is asked on its behalf.
        """
        kwargs: dict[str, Any] = {
            "session": session,
            "mechanism": mechanism,
            "login": login,
            "secret": secret,
        }
        active_lookup.set(self._lookup)
        for call in self._calls["authenticate"]:
            ok, result = await self._invoke(call, kwargs, session, None)
            if not ok:
                raise AuthenticationUnavailable(call.plugin.name)
            if result is not None:
                return bool(result)
        return None

    async def directory(
        self, session: Session | None, question: Question, subject: str
    ) -> Entry | None:
        """Run `directory` until a backend answers (`mailgate.directory.ask` calls this).

        Raises `DirectoryUnavailable` when a backend fails and its ``on_error`` is not
        ``accept``; with ``accept`` the next backend is asked.
        """
        kwargs: dict[str, Any] = {"session": session, "question": question, "subject": subject}
        for call in self._calls["directory"]:
            if session is None:
                ok, result = await self._invoke_bare(call, kwargs)
            else:
                ok, result = await self._invoke(call, kwargs, session, None)
            if not ok:
                verdict = error_verdict(call.plugin.on_error)
                if verdict is None:
                    continue
                raise DirectoryUnavailable(call.plugin.name, verdict)
            if result is not None:
                return result  # type: ignore[no-any-return]
        return None

    async def _invoke_bare(self, call: _Call, kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """A `directory` call with no session to count on (a command-line check)."""
        try:
            async with asyncio.timeout(call.plugin.timeout):
                result = call.function(**{k: kwargs[k] for k in call.argnames})
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            log.error("plugin failed", plugin=call.plugin.name, hook=call.hook, reason=str(exc))
            return False, None
        return not wrong_answer(call.hook, result), result

    async def mail(self, session: Session, tx: Transaction) -> Verdict | None:
        """Run `on_mail` for the transaction's sender."""
        return await self._decide("on_mail", session, tx, sender=tx.sender)

    async def rcpt(self, session: Session, tx: Transaction, recipient: Address) -> Verdict | None:
        """Run `on_rcpt` for one recipient (not yet in `tx.recipients`)."""
        token = current_recipient.set(recipient)  # `rcpt` in `when` expressions
        try:
            return await self._decide("on_rcpt", session, tx, recipient=recipient)
        finally:
            current_recipient.reset(token)

    async def unknown(
        self, session: Session, tx: Transaction | None, command: str
    ) -> Verdict | None:
        """Run `on_unknown` for a command line nobody knows."""
        return await self._decide("on_unknown", session, tx, command=command)

    async def data(self, session: Session, tx: Transaction) -> Verdict | None:
        """Run `on_data`."""
        return await self._decide("on_data", session, tx)

    async def headers(
        self, session: Session, tx: Transaction, headers: list[Header]
    ) -> Verdict | None:
        """Run `on_headers`."""
        return await self._decide("on_headers", session, tx, headers=headers)

    async def message(self, session: Session, tx: Transaction) -> Verdict | None:
        """Run `on_message`: concurrent neighbours together, the others one by one."""
        calls = self._calls["on_message"]
        if not calls:
            return None
        assert tx.message is not None, "on_message needs transaction.message"
        kwargs: dict[str, Any] = {"session": session, "transaction": tx, "message": tx.message}
        i = 0
        while i < len(calls):
            group = [calls[i]]
            while calls[i].plugin.concurrent and i + len(group) < len(calls):
                nxt = calls[i + len(group)]
                if not nxt.plugin.concurrent:
                    break
                group.append(nxt)
            i += len(group)
            if len(group) == 1:
                ok, result = await self._invoke(group[0], kwargs, session, tx)
                verdict = result if ok else error_verdict(group[0].plugin.on_error)
            else:
                verdict = await self._run_concurrently(group, kwargs, session, tx)
            if verdict is not None:
                return self._checked(group[-1].plugin, verdict)
        return None

    async def _run_concurrently(
        self, group: list[_Call], kwargs: dict[str, Any], session: Session, tx: Transaction
    ) -> Verdict | None:
        async def one(call: _Call) -> _Outcome:
            out = _Outcome()
            pending_modifications.set(out.modifications)
            ok, result = await self._invoke(call, kwargs, session, tx)
            verdict = result if ok else error_verdict(call.plugin.on_error)
            # Named here: the group's verdict is any member's, not the last one's.
            out.verdict = self._checked(call.plugin, verdict) if verdict is not None else None
            return out

        outcomes = await asyncio.gather(*(one(c) for c in group))
        first: Verdict | None = None
        for out in outcomes:
            if first is not None and first.kind is VerdictKind.ACCEPT:
                break
            for mod in out.modifications:
                tx.apply(mod)
            if first is None:
                first = out.verdict
        return first

    async def rcpt_refused(
        self, session: Session, tx: Transaction, recipient: Address, verdict: Verdict
    ) -> None:
        """Run `on_rcpt_refused` on every plugin; failures are only logged."""
        calls = self._calls["on_rcpt_refused"]
        if not calls:
            return
        kwargs: dict[str, Any] = {
            "session": session,
            "transaction": tx,
            "recipient": recipient,
            "verdict": verdict,
        }
        for call in calls:
            await self._invoke(call, kwargs, session, tx, always=True)

    async def outcome(self, session: Session, tx: Transaction, verdict: Verdict) -> None:
        """Run `on_outcome` on every plugin; failures are only logged."""
        kwargs: dict[str, Any] = {"session": session, "transaction": tx, "verdict": verdict}
        for call in self._calls["on_outcome"]:
            await self._invoke(call, kwargs, session, tx, always=True)

    async def disconnect(self, session: Session) -> None:
        """Run `on_disconnect` on every plugin; failures are only logged."""
        for call in self._calls["on_disconnect"]:
            await self._invoke(call, {"session": session}, session, None, always=True)
