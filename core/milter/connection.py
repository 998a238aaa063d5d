"""One milter connection from the MTA: frames in, calls on the session's flow, replies out.

The MTA keeps the message: the flow's egress is `MtaEgress`, whose end of data is the hand-back
of the plugins' changes as milter actions (or a tempfail when the MTA did not allow one).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import IO, Any, TypeVar

from mailgate.egress import MtaEgress, Reply
from mailgate.flow import SessionFlow
from mailgate.logging import get_logger
from mailgate.message import Header, Message, new_spool
from mailgate.milter import codec as c
from mailgate.milter.macros import (
    decode_macros,
    new_session,
    refused_by_mta,
    update_session,
    update_transaction,
)
from mailgate.milter.negotiation import negotiate
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import Command
from mailgate.milter.settings import MilterListenerSettings
from mailgate.milter.stream import MilterStream
from mailgate.milter.translate import actions, ungranted, verdict_reply
from mailgate.pipeline import Pipeline
from mailgate.session import Address, Transaction
from mailgate.smtp import replies
from mailgate.verdict import Verdict, VerdictKind

log = get_logger("mailgate.milter")

_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)
"""TCP_QUICKACK where the system has it (Linux), else 0."""
_TCP = (socket.AF_INET, socket.AF_INET6)
_PROGRESS = c.encode(c.Progress())
_PROGRESS_VERSION = 6
"""SMFIR_PROGRESS exists from milter protocol 6 on."""

T = TypeVar("T")


def _address(raw: bytes) -> str:
    text = raw.decode("utf-8", "surrogateescape").strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


def _params(raw: tuple[bytes, ...]) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in raw]


class MilterConnection:
    """The milter side of one MTA connection: one or more SMTP sessions (QUIT_NC), in order."""

    def __init__(
        self,
        stream: MilterStream,
        settings: MilterListenerSettings,
        pipeline: Pipeline,
    ) -> None:
        self.stream = stream
        self.settings = settings
        self.pipeline = pipeline
        self.agreed: Negotiated | None = None
        self.flow: SessionFlow | None = None
        """The current SMTP session's flow (a connection carries one session after another)."""
        self.egress = MtaEgress(self.hand_back)
        self.macros: Mapping[str, str] = _NO_MACROS
        self.headers: list[Header] = []
        self.spool: IO[bytes] | None = None
        self.out: list[bytes] = []
        self.closing = False
        self.connect_verdict: Verdict | None = None
        self._header_bytes = 0
        self._data_seen = False
        """`on_data` ran for this transaction (at DATA, or late: see `data_if_skipped`)."""
        self._owed: tuple[Command, Verdict] | None = None
        """A refusal given at a step the MTA did not wait for, and where (see `answer`)."""
        self._macro_bytes = 0
        self._deadline = 0.0
        self._reading = False
        self._cancelled_for = ""
        """Why this connection cancelled its own task: ``idle`` or ``lost`` (else "")."""
        self._progress_timer: asyncio.TimerHandle | None = None
        self._macro_pairs: tuple[tuple[bytes, bytes], ...] | None = None
        self._decoded_macros: Mapping[str, str] = _NO_MACROS
        self._watchdog: asyncio.TimerHandle | None = None
        self._quickack: socket.socket | None = None
        """Our own handle on the transport's TCP socket while `run` runs (the same descriptor,
        detached before the transport closes it), to re-arm TCP_QUICKACK after each read: the
        transport's (uvloop's pseudo-socket) makes and drops a socket object per call. The
        event loop has already set TCP_NODELAY."""

    async def run(self) -> None:
        """Serve the connection until QUIT, EOF, a timeout or a protocol error."""
        decoder = c.FrameDecoder("commands", max_frame=self.settings.max_frame)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        idle = self.settings.idle_timeout
        self._deadline = loop.time() + idle
        self._watchdog = loop.call_at(self._deadline, self._check_idle, loop, task)
        handlers = _HANDLERS
        at_once = _AT_ONCE
        try:
            sock = self.stream.get_extra_info("socket")
            if _QUICKACK and sock is not None and sock.family in _TCP:
                self._quickack = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
            while not self.closing:
                self._deadline = loop.time() + idle
                self._reading = True
                data = await self.stream.read()
                self._reading = False
                if not data:
                    break
                frames = decoder.feed(data)
                if self._quickack is not None and self._acks_alone(frames):
                    # Linux drops back to delayed ACKs after a while; re-arm after every read
                    # that gets no reply (a reply carries the ACK itself).
                    self._quickack.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                for frame in frames:
                    if self.agreed is None and type(frame) is not c.OptNeg:
                        raise c.MilterProtocolError(
                            f"{type(frame).__name__} before option negotiation"
                        )
                    kind = type(frame)
                    simple = at_once.get(kind)
                    if simple is not None:
                        simple(self, frame)
                    else:
                        await handlers[kind](self, frame)
                    if self.closing:
                        break
                if self.out:
                    self.stream.write(b"".join(self.out))
                    self.out.clear()
                    await self.stream.drain()
        except c.MilterProtocolError as exc:
            log.warning(
                "milter protocol error, closing connection", peer=self.peer, reason=str(exc)
            )
        except asyncio.CancelledError:
            if not self._cancelled_for or task.uncancel() > 0:
                raise
            if self._cancelled_for == "idle":
                log.info("milter connection idle, closing", peer=self.peer)
            else:
                log.info("milter connection lost", peer=self.peer, reason="closed by the MTA")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("milter connection lost", peer=self.peer, reason=str(exc))
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            if self._quickack is not None:
                self._quickack.detach()  # the descriptor is the transport's to close
                self._quickack = None
            await self.end_session()
            self.stream.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.stream.wait_closed()

    @property
    def peer(self) -> Any:
        """The MTA's address, for log lines (looked up only when one is written)."""
        return self.stream.get_extra_info("peername")

    def _acks_alone(self, frames: list[c.Frame]) -> bool:
        """True if these frames get no reply, so only an ACK on its own tells the MTA they
        arrived (the MTA waits for that ACK before it sends a short write that follows)."""
        if not frames:
            return True
        last = frames[-1]
        if self.agreed is None:
            return type(last) is not c.OptNeg
        return last.code not in self.agreed.answered_codes

    def _check_idle(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        # One timer per connection, moved on lazily: an `asyncio.timeout` around every read
        # costs a timer handle each time, a measurable share of a message's CPU.
        now = loop.time()
        if self._reading and now >= self._deadline:
            self._cancelled_for = "idle"
            task.cancel()
            return
        # In time, or busy with a frame (only the wait for the MTA counts): look again later.
        later = self._deadline if self._reading else now + self.settings.idle_timeout
        self._watchdog = loop.call_at(later, self._check_idle, loop, task)

    # -- dispatch ---------------------------------------------------------------------------------

    def reply(self, frame: c.Frame) -> None:
        """Queue a frame; all queued frames go out in one write after the current read."""
        self.out.append(c.encode(frame))

    def answer(self, command: Command, verdict: Verdict | None) -> None:
        """Reply to a step, unless the MTA agreed not to wait for one. A quarantine given
        before the end of message is the flow's to apply there (the MTA holds only then).

        A refusal at a step the MTA does not wait for (a plugin whose ``answers`` said it
        would not give one there) is owed: the message is tempfailed at its end."""
        assert self.agreed is not None
        if self.agreed.replies_to(command):
            self.reply(verdict_reply(verdict, end_of_message=False))
        elif verdict is not None and verdict.is_refusal and self._owed is None:
            self._owed = (command, verdict)

    async def handle(self, frame: c.MilterCommand) -> None:
        """Act on one frame from the MTA."""
        if self.agreed is None and type(frame) is not c.OptNeg:
            raise c.MilterProtocolError(f"{type(frame).__name__} before option negotiation")
        simple = _AT_ONCE.get(type(frame))
        if simple is not None:
            simple(self, frame)
        else:
            await _HANDLERS[type(frame)](self, frame)

    # One method per frame type, found by the frame's type: cheaper than a `match` over
    # fifteen class patterns for each of the ~25 frames of a message.

    def _optneg(self, frame: c.OptNeg) -> None:
        self.agreed, answer = negotiate(frame, self.pipeline)
        encoded = _ENCODED_OPTNEG.get(answer)
        if encoded is None:
            encoded = c.encode(answer)
            if len(_ENCODED_OPTNEG) < 64:
                _ENCODED_OPTNEG[answer] = encoded
        self.out.append(encoded)

    def _macro(self, frame: c.Macro) -> None:
        # Postfix repeats the same macros (the queue id) before every header and body chunk.
        pairs = frame.macros
        changed = pairs is not self._macro_pairs and pairs != self._macro_pairs
        if changed:
            self._macro_pairs = pairs
            self._decoded_macros = decode_macros(pairs)
        self.macros = self._decoded_macros
        if self.flow is not None:
            if changed:
                self._keep_macros(self.flow.session.macros, self.macros)
                update_session(self.flow.session, self.macros)
            if self.flow.tx is not None:
                update_transaction(self.flow.tx, self.macros)

    def _keep_macros(self, kept: Mapping[str, str], new: Mapping[str, str]) -> None:
        """Count what `new` adds to the session's macros; past the limits, close."""
        added = grown = 0
        for name, value in new.items():
            old = kept.get(name)
            if old is None:
                added += 1
                grown += len(name) + len(value)
            else:
                grown += len(value) - len(old)
        self._macro_bytes += grown
        s = self.settings
        if len(kept) + added > s.max_macros or self._macro_bytes > s.max_macro_bytes:
            raise c.MilterProtocolError(
                f"macros over the limit ({s.max_macros} names, {s.max_macro_bytes} bytes a session)"
            )

    async def _helo(self, frame: c.Helo) -> None:
        await self.on_helo(frame.name.decode("utf-8", "surrogateescape"))

    async def _mail(self, frame: c.Mail) -> None:
        await self.on_mail(Address(_address(frame.sender), _params(frame.params)))

    async def _rcpt(self, frame: c.Rcpt) -> None:
        await self.on_rcpt(Address(_address(frame.recipient), _params(frame.params)))

    async def _data(self, frame: c.Data) -> None:
        flow, _ = await self.current()
        self._data_seen = True
        self.answer(Command.DATA, await flow.data())

    def _header(self, frame: c.Header) -> None:
        self.on_header(frame.name, frame.value)

    async def _end_of_headers(self, frame: c.EndOfHeaders) -> None:
        flow, _ = await self.current()
        refused = await self.data_if_skipped(flow)
        self.answer(Command.EOH, refused or await flow.headers(self.headers))

    def _body(self, frame: c.Body) -> None:
        assert self.agreed is not None
        if "body" not in self.agreed.withheld:  # a body the MTA was asked not to send is dropped
            self.body().write(frame.chunk)
        self.answer(Command.BODY, None)

    async def _end_of_message(self, frame: c.EndOfMessage) -> None:
        assert self.agreed is not None
        if frame.chunk and "body" not in self.agreed.withheld:
            self.body().write(frame.chunk)
        await self.on_end_of_message()

    async def _abort(self, frame: c.Abort) -> None:
        flow = self.flow
        if flow is not None and flow.tx is not None:
            later = flow.later
            if later is not None and later.kind is VerdictKind.DISCARD:
                # The MTA was told to discard at an earlier step, and did.
                await flow.finish(later, Reply(250, "2.0.0", "Ok: discarded"))
            else:
                await flow.abort("aborted by the MTA")
        self.end_transaction()

    def _quit(self, frame: c.Quit) -> None:
        self.closing = True

    async def _quit_no_close(self, frame: c.QuitNoClose) -> None:
        await self.end_session()

    async def _unknown(self, frame: c.Unknown) -> None:
        flow = await self.session_flow()
        command = frame.command.decode("utf-8", "surrogateescape")
        self.answer(Command.UNKNOWN, await flow.unknown(command))

    # -- stages -----------------------------------------------------------------------------------

    async def session_flow(self) -> SessionFlow:
        """The session's flow, made up if the MTA skipped CONNECT (no plugin asked for it)."""
        if self.flow is None:
            return await self.open_session(c.Connect(b"", b"U"))
        return self.flow

    async def current(self) -> tuple[SessionFlow, Transaction]:
        """The flow and its transaction, made up if the MTA skipped the steps that open them
        (no plugin asked for CONNECT or MAIL)."""
        flow = await self.session_flow()
        if flow.tx is None:
            await flow.mail(Address(""))
            if flow.tx is None:
                raise c.MilterProtocolError("a transaction was refused at a step the MTA skipped")
            update_transaction(flow.tx, self.macros)
        return flow, flow.tx

    async def open_session(self, frame: c.Connect) -> SessionFlow:
        """A new SMTP session: its flow, opened (``on_connect``)."""
        session = new_session(frame, self.macros, self.settings.name)
        self._macro_bytes = 0
        self._keep_macros({}, dict(session.macros))
        self.flow = SessionFlow(self.pipeline, session, self.egress)
        self.connect_verdict = await self.flow.open()
        return self.flow

    async def on_connect(self, frame: c.Connect) -> None:
        """CONNECT: a new session."""
        macros = self.macros
        await self.end_session()
        self.macros = macros
        await self.open_session(frame)
        self.answer(Command.CONNECT, self.connect_verdict)

    async def on_helo(self, name: str) -> None:
        """HELO: remember the name (a new HELO replaces it)."""
        flow = await self.session_flow()
        flow.session.helo = name
        self.answer(Command.HELO, await flow.helo(name))

    async def on_mail(self, sender: Address) -> None:
        """MAIL FROM: a new transaction; a refused sender opens none (no on_outcome)."""
        self.end_transaction()
        flow = await self.session_flow()
        verdict = await flow.mail(sender)  # ends the open transaction first, if any
        if flow.tx is not None:
            update_transaction(flow.tx, self.macros)
        self.answer(Command.MAIL, verdict)

    async def on_rcpt(self, recipient: Address) -> None:
        """RCPT TO: the recipient joins the transaction unless a plugin refuses it. A recipient
        the MTA itself refused (sent because a plugin has `on_rcpt_refused`) goes to that hook."""
        flow, _ = await self.current()
        refused = refused_by_mta(self.macros)
        if refused is not None:
            await flow.refused(recipient, refused, by="mta")
            self.answer(Command.RCPT, None)
            return
        self.answer(Command.RCPT, await flow.rcpt(recipient))

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header: kept as it will be written, with CRLF inside folded values. A header the
        MTA was asked not to send is not kept; past the limits the connection closes."""
        assert self.agreed is not None
        if "headers" in self.agreed.withheld:
            self.answer(Command.HEADER, None)
            return
        self._header_bytes += len(name) + len(value)
        s = self.settings
        if len(self.headers) >= s.max_headers or self._header_bytes > s.max_header_bytes:
            raise c.MilterProtocolError(
                f"headers over the limit ({s.max_headers} fields, {s.max_header_bytes} bytes)"
            )
        if b"\n" in value:  # folded: the MTA sends LF (Postfix) or CRLF between the lines
            value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        raw = value.decode("utf-8", "surrogateescape")
        key = name.decode("utf-8", "surrogateescape")
        self.headers.append(Header(key, raw) if self.agreed.leading_space else Header.new(key, raw))
        self.answer(Command.HEADER, None)

    def body(self) -> IO[bytes]:
        """The spool the body goes to."""
        if self.spool is None:
            self.spool = new_spool(self.settings.spool_threshold)
        return self.spool

    async def on_end_of_message(self) -> None:
        """End of message: the flow decides; the changes go back as actions (`hand_back`),
        then the final reply."""
        assert self.agreed is not None
        if self._owed is not None:
            await self._tempfail_owed(*self._owed)
            return
        flow, tx = await self.current()
        refused = await self.data_if_skipped(flow)
        if refused is not None:
            await self._refuse_message(refused, replies.from_verdict(refused))
            return
        if tx.message is None:
            withheld = self.agreed.withheld
            # A body the MTA does not send stays empty: no spool file object for it.
            body = io.BytesIO() if "body" in withheld and self.spool is None else self.body()
            tx.message = Message(self.headers, body, withheld=withheld)
            self.spool = None
        ending = await self.with_progress(flow.end_of_data())
        verdict: Verdict | None = ending.verdict
        if ending.delivered and ending.verdict.kind is VerdictKind.ACCEPT:
            # No plugin decided: CONTINUE, as libmilter filters answer.
            verdict = ending.verdict if ending.verdict.plugin else None
        self.reply(verdict_reply(verdict, end_of_message=True))
        self.end_transaction()

    async def _tempfail_owed(self, step: Command, owed: Verdict) -> None:
        """End the message with a tempfail for a refusal the MTA never heard (`answer`): what
        a plugin refused is not delivered, and the sender tries again."""
        log.error(
            "plugin refused at a step the MTA does not wait for: message tempfailed",
            plugin=owed.plugin,
            step=step.name,
            refusal=replies.from_verdict(owed).smtp_reply(),
        )
        tempfail = replies.to_verdict(
            replies.LOCAL_ERROR, reason=f"{owed.plugin} refused at {step.name}, unheard"
        )
        await self._refuse_message(tempfail, replies.LOCAL_ERROR)

    async def _refuse_message(self, verdict: Verdict, reply: Reply) -> None:
        """End the message at its end with `verdict` (a refusal): the transaction, if one is
        open, finishes with it, and it is the MTA's final reply."""
        flow = self.flow
        if flow is not None and flow.tx is not None:
            await flow.finish(verdict, reply)
        self.reply(verdict_reply(verdict, end_of_message=True))
        self.end_transaction()

    async def data_if_skipped(self, flow: SessionFlow) -> Verdict | None:
        """`on_data` for an MTA that sent no DATA step (milter protocol 2 has none), run
        before the headers' or the message's step; its refusal, to answer that step with."""
        if self._data_seen or not self.pipeline.implements("on_data"):
            return None
        self._data_seen = True
        verdict = await flow.data()
        return verdict if verdict is not None and verdict.is_refusal else None

    def hand_back(self, tx: Transaction) -> Reply | None:
        """The MTA takes the message back: the plugins' changes as milter actions, or a
        tempfail when one of them is an action the MTA did not offer."""
        assert self.agreed is not None
        missing = ungranted(tx.modifications, self.agreed)
        if missing:
            log.error("modification not offered by the MTA: message tempfailed", missing=missing)
            return Reply(451, "4.3.0", "Filter cannot apply its changes")
        for action in actions(tx.modifications, tx.message, self.agreed):
            self.reply(action)
        return None

    async def with_progress(self, work: Awaitable[T]) -> T:
        """Await `work`, sending PROGRESS every `progress_interval` seconds until it is done.

        The MTA gives the milter `milter_content_timeout` for its end-of-message reply; each
        PROGRESS restarts that timer, so a long scan is not tempfailed. If the connection is
        closed or cancelled meanwhile, `work` is cancelled too.
        """
        assert self.agreed is not None
        interval = self.settings.progress_interval
        if interval <= 0 or self.agreed.version < _PROGRESS_VERSION:
            return await work
        # A timer, not a task of its own for `work`: a message's end is the hot path, and
        # almost always done long before the first PROGRESS is due.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._progress_timer = loop.call_later(interval, self._progress, loop, task, interval)
        try:
            return await work
        finally:
            self._progress_timer.cancel()
            self._progress_timer = None

    def _progress(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None], interval: float
    ) -> None:
        if self.stream.is_closing():  # the MTA went away: stop the work (`run` ends)
            self._cancelled_for = "lost"
            task.cancel()
            return
        # Replies queued before the end of message go first, then PROGRESS, at once.
        self.out.append(_PROGRESS)
        self.stream.write(b"".join(self.out))
        self.out.clear()
        self._progress_timer = loop.call_later(interval, self._progress, loop, task, interval)

    # -- endings ----------------------------------------------------------------------------------

    def end_transaction(self) -> None:
        """Forget the current message's headers and body (ABORT, a new MAIL, or its end)."""
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self.headers = []
        self._header_bytes = 0
        self._data_seen = False
        if self._owed is not None and self._owed[0] not in _SESSION_STEPS:
            self._owed = None

    async def end_session(self) -> None:
        """The SMTP session is over: the flow closes it (`on_disconnect` once)."""
        self._owed = None
        self.end_transaction()
        flow, self.flow = self.flow, None
        if flow is not None:
            await flow.close("aborted by the MTA: session ended")
        self.macros = _NO_MACROS
        self._macro_bytes = 0


_NO_MACROS: Mapping[str, str] = MappingProxyType({})

_SESSION_STEPS = frozenset({Command.CONNECT, Command.HELO})
"""Steps whose owed refusal holds for every message of the session (see `answer`)."""

_ENCODED_OPTNEG: dict[c.OptNegReply, bytes] = {}
"""The OPTNEG answer on the wire: the same few answers on every connection."""

_AT_ONCE: dict[type, Callable[[MilterConnection, Any], None]] = {
    c.OptNeg: MilterConnection._optneg,
    c.Macro: MilterConnection._macro,
    c.Header: MilterConnection._header,
    c.Body: MilterConnection._body,
    c.Quit: MilterConnection._quit,
}
"""What the frames that never wait for anything do: called, not awaited (most of a message's
frames are macros and headers, and a coroutine per frame is a measurable cost)."""

_HANDLERS: dict[type, Callable[[MilterConnection, Any], Awaitable[None]]] = {
    c.Connect: MilterConnection.on_connect,
    c.Helo: MilterConnection._helo,
    c.Mail: MilterConnection._mail,
    c.Rcpt: MilterConnection._rcpt,
    c.Data: MilterConnection._data,
    c.EndOfHeaders: MilterConnection._end_of_headers,
    c.EndOfMessage: MilterConnection._end_of_message,
    c.Abort: MilterConnection._abort,
    c.QuitNoClose: MilterConnection._quit_no_close,
    c.Unknown: MilterConnection._unknown,
}
"""What each other command frame the MTA sends does."""
