"""`SessionFlow`: the life of one client session and its messages, the same for every way in.

Each ingress (the SMTP, milter and policy listeners, and ``mailgate try``) translates its
protocol into calls on one flow per session; the flow owns the rules that do not depend on the
protocol:

- opening and closing the session: the session and transaction ids in the log context, the
  ``session start``/``session end`` lines, session metrics, ``on_connect`` and ``on_disconnect``;
- recipients joining a transaction: refused by a plugin, the downstream or the MTA (each logged,
  each sent to ``on_rcpt_refused``), deleted at RCPT by a plugin (rewritten into others), or
  accepted;
- the end of data: ``on_message``, which verdict wins (a refusal over an earlier discard or
  quarantine, which apply at the end), storing a quarantined message when the way out cannot
  hold it, and handing the message to the egress;
- the end of a transaction, delivered, refused or aborted: ``on_outcome``, the message metrics
  and the one ``message outcome`` log line, which agree.

The way out is an `Egress` (relay now, queue next; the MTA itself for the milter listener; none
for ``mailgate try``). Every egress step has a deadline and never raises into the ingress: a
failure is a 4xx for the client and a warning line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from mailgate.authentication_results import apply_authentication_results
from mailgate.config.dynamic import Dynamic
from mailgate.egress import DownstreamTransaction, Egress, Reply
from mailgate.expressions import current_recipient
from mailgate.logging import get_logger
from mailgate.message import Header
from mailgate.metrics import Metrics, metrics_of
from mailgate.pipeline import Pipeline
from mailgate.quarantine import Quarantine
from mailgate.session import Address, Session, Transaction
from mailgate.smtp import replies
from mailgate.smtp.trace import count_received, received_header
from mailgate.verdict import Verdict, VerdictKind, aborted

log = get_logger("mailgate.flow")

T = TypeVar("T")

_LATER = (VerdictKind.DISCARD, VerdictKind.QUARANTINE)
"""Verdicts given before the end of data that apply to the whole message at its end."""


@dataclass(frozen=True, slots=True)
class Trace:
    """What an SMTP ingress does to the header block: count hops, add its ``Received:``."""

    hostname: str
    add_received: bool = True
    max_received: int = 100


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """The limits and trace of one listener, as the flow applies them."""

    egress_timeout: float = 600.0
    """Seconds one egress step (MAIL, RCPT, the message) may take; then 451."""
    max_recipients: int | Dynamic[int] = 0
    """Recipients per transaction (0: no limit of mailgate's own; the MTA has one); with
    rules, read at each RCPT with ``rcpt`` the recipient offered."""
    trace: Trace | None = None
    """The SMTP ingress's trace header; None where the MTA adds its own (milter, policy)."""
    keep_message: bool = False
    """Leave the message open when its transaction ends (``mailgate try`` shows and writes
    it afterwards); a listener releases the spool at once."""


@dataclass(frozen=True, slots=True)
class Ending:
    """How a transaction ended: the verdict `on_outcome` got and the reply the client got."""

    verdict: Verdict
    reply: Reply
    delivered: bool = False


class SessionFlow:
    """One session's flow (see the module docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        session: Session,
        egress: Egress,
        *,
        settings: FlowSettings | None = None,
        quarantine: Quarantine | None = None,
        before_egress: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.session = session
        self.egress = egress
        self.settings = settings or FlowSettings()
        self.quarantine = quarantine
        self.before_egress = before_egress
        """Awaited before each wait on the egress (the SMTP listener writes held replies)."""
        self.metrics: Metrics | None = metrics_of(pipeline)
        self.tx: Transaction | None = None
        self.dtx: DownstreamTransaction | None = None
        self.later: Verdict | None = None
        """A discard or quarantine given before the end of data, applied there."""
        self.hold_reason = ""
        """A quarantine asked for before MAIL: every message of the session is held."""
        self._refused: Verdict | None = None
        self._tx_started = 0.0
        self._failure = replies.DOWNSTREAM_FAILED
        self._no_deadline = getattr(egress, "answers_at_once", False)
        """The egress never waits (the MTA egress): its steps skip the timer of a deadline."""
        self.closed = False

    # -- the session ------------------------------------------------------------------------------

    async def open(self) -> Verdict | None:
        """The session starts: ids into the log context, the log line, metrics, `on_connect`."""
        session = self.session
        structlog.contextvars.bind_contextvars(session=session.id)
        if self.pipeline.client_names is not None:
            await self.pipeline.client_names.name(session)
        log.info(
            "session start",
            client=session.client_ip,
            name=session.client_name,
            port=session.client_port,
            listener=session.listener,
            ingress=session.ingress,
        )
        if self.metrics is not None:
            self.metrics.session_opened(session)
        verdict = await self.pipeline.connect(session)
        self._note_hold(verdict)
        return verdict

    async def helo(self, name: str) -> Verdict | None:
        """HELO/EHLO: `on_helo`; the name is the session's unless it was refused."""
        verdict = await self.pipeline.helo(self.session, name)
        if verdict is None or not verdict.is_refusal:
            self.session.helo = name
        self._note_hold(verdict)
        return verdict

    def _note_hold(self, verdict: Verdict | None) -> None:
        if verdict is not None and verdict.kind is VerdictKind.QUARANTINE:
            self.hold_reason = verdict.reason or "quarantined by policy"

    async def close(self, reason: str = "aborted by client: disconnect") -> None:
        """The session is over: abort what is open, `on_disconnect`, metrics, the log line."""
        if self.closed:
            return
        self.closed = True
        await self.abort(reason)
        try:
            await self.egress.end_session(self.session)
        except Exception as exc:
            log.warning("egress failed to end the session", error=_describe(exc))
        await self.pipeline.disconnect(self.session)
        if self.metrics is not None:
            self.metrics.session_closed(self.session)
        log.info("session end", counters=self.session.counters)
        structlog.contextvars.unbind_contextvars("session", "tx")

    # -- the envelope -----------------------------------------------------------------------------

    async def mail(self, sender: Address, notes: dict[str, str] | None = None) -> Verdict | None:
        """MAIL FROM: a new transaction, `on_mail`, then MAIL FROM downstream.

        A refusal (the plugin's or the downstream's) opens no transaction. Otherwise the
        transaction is open (`tx`) and the plugin's verdict, if any, is returned.
        """
        await self.abort("aborted: new MAIL FROM")
        tx = Transaction(sender)
        if notes:
            tx.notes.update(notes)
        if self.hold_reason:
            tx.quarantine(self.hold_reason)
        structlog.contextvars.bind_contextvars(tx=tx.id)
        self._tx_started = time.monotonic()
        verdict = await self.pipeline.mail(self.session, tx)
        if verdict is not None and verdict.is_refusal:
            log.info("sender refused", sender=sender.address, code=verdict.code, by=verdict.plugin)
            structlog.contextvars.unbind_contextvars("tx")
            return verdict
        begun = await self._egress_step(self.egress.begin(self.session, tx))
        if begun is not None:
            self._note_failure(begun[0])
        if begun is None or begun[1] is None:
            reply = self._refusal(begun[0] if begun is not None else None)
            log.info("sender refused", sender=sender.address, code=reply.code, by="downstream")
            structlog.contextvars.unbind_contextvars("tx")
            return replies.to_verdict(reply, reason="refused downstream")
        self.tx, self.dtx = tx, begun[1]
        self._refused = None
        self._remember_later(verdict)
        return verdict

    def _recipient_limit(self, tx: Transaction, recipient: Address) -> int:
        limit = self.settings.max_recipients
        if isinstance(limit, int):
            return limit
        if limit.is_fixed:
            return limit.default
        token = current_recipient.set(recipient)
        try:
            return limit.value(self.session, tx)
        finally:
            current_recipient.reset(token)

    async def rcpt(self, recipient: Address) -> Verdict | None:
        """RCPT TO: the recipient joins unless mailgate's limit, a plugin or the downstream
        refuses it (a refusal is returned); a recipient a plugin deleted does not join, and
        the ones it added go downstream with the final envelope at the end of data."""
        tx = self._open_tx()
        limit = self._recipient_limit(tx, recipient)
        if limit and len(tx.recipients) >= limit:
            refusal = replies.to_verdict(replies.TOO_MANY_RECIPIENTS, reason="too many recipients")
            return await self.refused(recipient, refusal, by="listener")
        made = len(tx.modifications)
        verdict = await self.pipeline.rcpt(self.session, tx, recipient)
        if verdict is not None and verdict.is_refusal:
            return await self.refused(recipient, verdict, by=verdict.plugin or "plugin")
        self._remember_later(verdict)
        if tx.deletes_since(made, recipient.address):
            return verdict
        reply = None
        if self.dtx is not None:
            reply = self._note_failure(await self._egress_step(self.dtx.rcpt(recipient)))
        if reply is None or not reply.ok:
            refusal = replies.to_verdict(self._refusal(reply), reason="refused downstream")
            return await self.refused(recipient, refusal, by="downstream")
        tx.recipients.append(recipient)
        return verdict

    async def refused(self, recipient: Address, verdict: Verdict, *, by: str) -> Verdict:
        """A recipient refused by `by` (a plugin's name, ``downstream``, ``mta``, ``listener``):
        logged, counted for the outcome, and sent to `on_rcpt_refused`."""
        tx = self._open_tx()
        log.info(
            "recipient refused",
            rcpt=recipient.address,
            code=verdict.code,
            reply=replies.from_verdict(verdict).smtp_reply(),
            by=by,
            reason=verdict.reason,
        )
        self._refused = verdict
        await self.pipeline.rcpt_refused(self.session, tx, recipient, verdict)
        return verdict

    async def unknown(self, command: str) -> Verdict | None:
        """A command nobody knows: `on_unknown`; only a refusal is returned (the reply)."""
        verdict = await self.pipeline.unknown(self.session, self.tx, command)
        return verdict if verdict is not None and verdict.is_refusal else None

    async def data(self) -> Verdict | None:
        """DATA: `on_data`; a refusal ends the transaction (the client is answered with it)."""
        tx = self._open_tx()
        verdict = await self.pipeline.data(self.session, tx)
        self._remember_later(verdict)
        return verdict

    async def headers(self, headers: list[Header]) -> Verdict | None:
        """The header block is in: the hop count and our ``Received:`` (SMTP ingress), then
        `on_headers` (with a copy: the message's own list changes with the plugins' edits)."""
        tx = self._open_tx()
        trace = self.settings.trace
        if trace is not None:
            if trace.max_received and count_received(headers) > trace.max_received:
                return replies.to_verdict(replies.TOO_MANY_HOPS, reason="mail loop")
            if trace.add_received:
                headers.insert(0, received_header(self.session, tx, hostname=trace.hostname))
        verdict = await self.pipeline.headers(self.session, tx, list(headers))
        self._remember_later(verdict)
        return verdict

    # -- the end of data --------------------------------------------------------------------------

    async def message_verdict(self) -> Verdict | None:
        """`on_message`, then what wins: its refusal or discard, else an earlier discard or
        quarantine; a quarantine (now or earlier) marks the transaction held."""
        tx = self._open_tx()
        verdict = await self.pipeline.message(self.session, tx)
        if self.pipeline.authentication_results is not None:
            apply_authentication_results(self.session, tx, self.pipeline.authentication_results)
        if verdict is None or verdict.kind is VerdictKind.ACCEPT:
            verdict = self.later or verdict
        if verdict is not None and verdict.kind is VerdictKind.QUARANTINE:
            if tx.quarantined is None:
                tx.quarantine(verdict.reason or "quarantined by plugin")
        elif (verdict is None or verdict.kind is VerdictKind.ACCEPT) and tx.quarantined:
            verdict = Verdict.quarantine(reason=tx.quarantined)
        return verdict

    async def end_of_data(self) -> Ending:
        """The message is in: decide (`message_verdict`), then refuse, discard, hold or hand it
        to the egress. The client's answer is never 2xx unless the egress or the quarantine
        took the message."""
        return await self.conclude(await self.message_verdict())

    async def conclude(self, verdict: Verdict | None) -> Ending:
        """End the transaction on `message_verdict`'s answer: refuse, discard, hold or hand it
        to the egress."""
        tx = self._open_tx()
        if verdict is not None and (verdict.is_refusal or verdict.kind is VerdictKind.DISCARD):
            return await self.finish(verdict, replies.from_verdict(verdict))
        if tx.quarantined is not None and not self.egress.holds_quarantined:
            return await self._hold(tx, verdict or Verdict.quarantine(reason=tx.quarantined))
        dtx, self.dtx = self.dtx, None
        reply = None
        if dtx is not None:
            reply = self._note_failure(await self._egress_step(dtx.deliver(self.session, tx)))
        if reply is None or not 200 <= reply.code < 300:
            self.dtx = dtx
            refusal = self._refusal(reply)
            return await self.finish(replies.to_verdict(refusal, reason="downstream"), refusal)
        final = verdict if verdict is not None else Verdict.accept(reason="delivered")
        return await self.finish(final, reply, delivered=True)

    async def _hold(self, tx: Transaction, verdict: Verdict) -> Ending:
        """Store a quarantined message: the egress cannot hold it, so mailgate does."""
        reason = tx.quarantined or verdict.reason
        failed = replies.QUARANTINE_FAILED
        if self.quarantine is None:
            log.error("quarantine asked for but none is configured", reason=reason)
            return await self.finish(replies.to_verdict(failed, reason="no quarantine"), failed)
        try:
            held = await self.quarantine.store(self.session, tx, reason, verdict.plugin)
        except Exception as exc:  # a full disk, a store that is down: 4xx, the client keeps it
            log.error("quarantine store failed", error=_describe(exc))
            why = "quarantine store failed"
            return await self.finish(replies.to_verdict(failed, reason=why), failed)
        log.info("message held", quarantine_id=held.id, reason=reason)
        return await self.finish(verdict, Reply(250, "2.0.0", f"Ok: held as {held.id}"))

    # -- endings ----------------------------------------------------------------------------------

    async def finish(self, verdict: Verdict, reply: Reply, *, delivered: bool = False) -> Ending:
        """The transaction got its final answer: outcome, metrics, the log line; then forget it."""
        tx = self.tx
        ending = Ending(verdict, reply, delivered)
        if tx is not None:
            self.session.count("messages" if delivered else verdict.kind.value)
            size = tx.message.size if tx.message is not None and not tx.message.withheld else -1
            await self._report(tx, verdict, reply, size)
            if self.metrics is not None:
                self.metrics.message(self.session, tx, verdict, size)
        await self._forget()
        return ending

    async def abort(self, reason: str) -> None:
        """End the open transaction, if any, without a final answer (RSET, a new MAIL, QUIT,
        a lost connection, the MTA's ABORT). A transaction whose every recipient was refused
        ends as that refusal; any other as an aborted tempfail."""
        tx = self.tx
        if tx is None:
            return
        if not tx.recipients and self._refused is not None:
            verdict = self._refused
            self.session.count(verdict.kind.value)
            await self._report(tx, verdict, replies.from_verdict(verdict), -1)
            if self.metrics is not None:
                self.metrics.message(self.session, tx, verdict, -1)
        else:
            verdict = aborted(reason)
            self.session.count("aborted")
            await self._report(tx, verdict, None, -1)
            if self.metrics is not None:
                self.metrics.aborted(self.session)
        await self._forget()

    async def _report(
        self, tx: Transaction, verdict: Verdict, reply: Reply | None, size: int
    ) -> None:
        if log.enabled(logging.INFO):  # the fields cost more than the check
            log.info(
                "message outcome",
                sender=tx.sender.address,
                rcpts=len(tx.recipients),
                size=max(size, 0),
                verdict=verdict.kind.value,
                reason=verdict.reason,
                reply=reply.smtp_reply() if reply is not None else "",
                elapsed_ms=round((time.monotonic() - self._tx_started) * 1000, 2),
            )
        await self.pipeline.outcome(self.session, tx, verdict)

    async def _forget(self) -> None:
        """Drop the transaction: abort it downstream, release its spool, unbind its id."""
        tx, dtx = self.tx, self.dtx
        self.tx = self.dtx = self.later = self._refused = None
        if dtx is not None:
            try:
                async with asyncio.timeout(self.settings.egress_timeout):
                    await dtx.abort()
            except Exception as exc:
                log.warning("downstream abort failed", error=_describe(exc))
        if tx is not None:
            if tx.message is not None and not self.settings.keep_message:
                tx.message.close()
            structlog.contextvars.unbind_contextvars("tx")

    # -- helpers ----------------------------------------------------------------------------------

    def _open_tx(self) -> Transaction:
        if self.tx is None:
            raise RuntimeError("no open transaction")
        return self.tx

    def _remember_later(self, verdict: Verdict | None) -> None:
        """Keep the first discard or quarantine given before the end of data."""
        if self.later is None and verdict is not None and verdict.kind in _LATER:
            self.later = verdict

    async def _egress_step(self, step: Awaitable[T]) -> T | None:
        """Await one egress step with its deadline; None (and a warning) if it failed."""
        if self.before_egress is not None:
            await self.before_egress()
        try:
            if self._no_deadline:
                return await step
            async with asyncio.timeout(self.settings.egress_timeout):
                return await step
        except TimeoutError:
            self._failure = replies.DOWNSTREAM_TIMEOUT
            self._downstream_error("timeout", f"no answer in {self.settings.egress_timeout} s")
        except Exception as exc:
            self._failure = replies.DOWNSTREAM_FAILED
            self._downstream_error("error", _describe(exc))
        return None

    def _note_failure(self, reply: Reply | None) -> Reply | None:
        """A reply the egress made up because the downstream failed: log and count it."""
        if reply is not None and reply.failure:
            self._downstream_error("unavailable", reply.failure)
        return reply

    def _downstream_error(self, kind: str, error: str) -> None:
        log.warning("downstream failed", downstream=self.egress.name, kind=kind, error=error)
        self.session.count("downstream_errors")
        if self.metrics is not None:
            self.metrics.downstream_error(self.egress.name, kind)

    def _refusal(self, reply: Reply | None) -> Reply:
        """The downstream's refusal as is; 451 when there was none (it failed or timed out)."""
        if reply is None:
            return self._failure
        return reply if 400 <= reply.code < 600 else replies.LOCAL_ERROR


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
