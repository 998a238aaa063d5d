"""One milter connection from the MTA: frames in, pipeline stages called, replies out."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

import structlog

from mailgate.message import Header, Message, new_spool
from mailgate.metrics import metrics_of
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
from mailgate.milter.translate import actions, ungranted, verdict_reply
from mailgate.pipeline import Pipeline
from mailgate.session import Address, Session, Transaction
from mailgate.verdict import Verdict, VerdictKind, aborted

log = structlog.get_logger("mailgate.milter")

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_READ_SIZE = 1 << 18
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
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: MilterListenerSettings,
        pipeline: Pipeline,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics_of(pipeline)
        self.agreed: Negotiated | None = None
        self.session: Session | None = None
        self.tx: Transaction | None = None
        self.macros: dict[str, str] = {}
        self.headers: list[Header] = []
        self.spool: IO[bytes] | None = None
        self.out: list[bytes] = []
        self.hold_reason = ""
        """A quarantine verdict given before MAIL: every message of the session is held."""
        self.closing = False
        self._deadline = 0.0
        self._reading = False
        self._idle_expired = False
        self._macro_pairs: tuple[tuple[bytes, bytes], ...] | None = None
        self._decoded_macros: dict[str, str] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        sock = writer.get_extra_info("socket")
        self._tcp = sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
        self._sock = sock
        if self._tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def run(self) -> None:
        """Serve the connection until QUIT, EOF, a timeout or a protocol error."""
        decoder = c.FrameDecoder("commands", max_frame=self.settings.max_frame)
        peer = self.writer.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        idle = self.settings.idle_timeout
        self._deadline = loop.time() + idle
        self._watchdog = loop.call_at(self._deadline, self._check_idle, loop, task)
        handlers = _HANDLERS
        try:
            while not self.closing:
                self._deadline = loop.time() + idle
                self._reading = True
                data = await self.reader.read(_READ_SIZE)
                self._reading = False
                if not data:
                    break
                if self._tcp and _QUICKACK is not None:
                    # Linux drops back to delayed ACKs after a while; re-arm after every read.
                    self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                for frame in decoder.feed(data):
                    if self.agreed is None and type(frame) is not c.OptNeg:
                        raise c.MilterProtocolError(
                            f"{type(frame).__name__} before option negotiation"
                        )
                    await handlers[type(frame)](self, frame)
                    if self.closing:
                        break
                if self.out:
                    self.writer.write(b"".join(self.out))
                    self.out.clear()
                    await self.writer.drain()
        except c.MilterProtocolError as exc:
            log.warning("milter protocol error, closing connection", peer=peer, reason=str(exc))
        except asyncio.CancelledError:
            if not self._idle_expired or task.uncancel() > 0:
                raise
            log.info("milter connection idle, closing", peer=peer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("milter connection lost", peer=peer, reason=str(exc))
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            await self.end_session()
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    def _check_idle(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        # One timer per connection, moved on lazily: an `asyncio.timeout` around every read
        # costs a timer handle each time, a measurable share of a message's CPU.
        now = loop.time()
        if self._reading and now >= self._deadline:
            self._idle_expired = True
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
        """Reply to a step, unless the MTA agreed not to wait for one."""
        assert self.agreed is not None
        if verdict is not None and verdict.kind is VerdictKind.QUARANTINE:
            # The milter can only hold a message at its end: remember the request until then.
            reason = verdict.reason or "quarantined by policy"
            if self.tx is not None:
                self.tx.quarantine(reason)
            else:
                self.hold_reason = reason
        if self.agreed.replies_to(command):
            self.reply(verdict_reply(verdict, end_of_message=False))

    async def handle(self, frame: c.MilterCommand) -> None:
        """Act on one frame from the MTA."""
        if self.agreed is None and type(frame) is not c.OptNeg:
            raise c.MilterProtocolError(f"{type(frame).__name__} before option negotiation")
        await _HANDLERS[type(frame)](self, frame)

    # One method per frame type, found by the frame's type: cheaper than a `match` over
    # fifteen class patterns for each of the ~25 frames of a message.

    async def _optneg(self, frame: c.OptNeg) -> None:
        self.agreed, answer = negotiate(frame, self.pipeline)
        encoded = _ENCODED_OPTNEG.get(answer)
        if encoded is None:
            encoded = c.encode(answer)
            if len(_ENCODED_OPTNEG) < 64:
                _ENCODED_OPTNEG[answer] = encoded
        self.out.append(encoded)

    async def _macro(self, frame: c.Macro) -> None:
        # Postfix repeats the same macros (the queue id) before every header and body chunk.
        if frame.macros != self._macro_pairs:
            self._macro_pairs = frame.macros
            self._decoded_macros = decode_macros(frame.macros)
        self.macros = self._decoded_macros
        if self.session is not None:
            update_session(self.session, self.macros)
        if self.tx is not None:
            update_transaction(self.tx, self.macros)

    async def _helo(self, frame: c.Helo) -> None:
        await self.on_helo(frame.name.decode("utf-8", "surrogateescape"))

    async def _mail(self, frame: c.Mail) -> None:
        await self.on_mail(Address(_address(frame.sender), _params(frame.params)))

    async def _rcpt(self, frame: c.Rcpt) -> None:
        await self.on_rcpt(Address(_address(frame.recipient), _params(frame.params)))

    async def _data(self, frame: c.Data) -> None:
        self.answer(Command.DATA, await self.pipeline.data(*self.current()))

    async def _header(self, frame: c.Header) -> None:
        self.on_header(frame.name, frame.value)

    async def _end_of_headers(self, frame: c.EndOfHeaders) -> None:
        session, tx = self.current()
        verdict = await self.pipeline.headers(session, tx, list(self.headers))
        self.answer(Command.EOH, verdict)

    async def _body(self, frame: c.Body) -> None:
        self.body().write(frame.chunk)
        self.answer(Command.BODY, None)

    async def _end_of_message(self, frame: c.EndOfMessage) -> None:
        if frame.chunk:
            self.body().write(frame.chunk)
        await self.on_end_of_message()

    async def _abort(self, frame: c.Abort) -> None:
        if self.tx is not None and self.session is not None:
            # As on the SMTP listener: a transaction that ends without a final answer is
            # reported to on_outcome as an aborted tempfail.
            if self.metrics is not None:
                self.metrics.aborted(self.session)
            await self.pipeline.outcome(self.session, self.tx, aborted("aborted by the MTA"))
        self.end_transaction()

    async def _quit(self, frame: c.Quit) -> None:
        self.closing = True

    async def _quit_no_close(self, frame: c.QuitNoClose) -> None:
        await self.end_session()

    async def _unknown(self, frame: c.Unknown) -> None:
        self.answer(Command.UNKNOWN, None)

    # -- stages -----------------------------------------------------------------------------------

    def current(self) -> tuple[Session, Transaction]:
        """The session and transaction, made up if the MTA skipped the steps that create them."""
        if self.session is None:
            self.session = new_session(c.Connect(b"", b"U"), self.macros, self.settings.name)
            self._opened(self.session)
        if self.tx is None:
            self.tx = Transaction(Address(""))
            update_transaction(self.tx, self.macros)
        return self.session, self.tx

    async def on_connect(self, frame: c.Connect) -> None:
        """CONNECT: a new session."""
        macros = self.macros
        await self.end_session()
        self.session = new_session(frame, macros, self.settings.name)
        self._opened(self.session)
        self.answer(Command.CONNECT, await self.pipeline.connect(self.session))

    async def on_helo(self, name: str) -> None:
        """HELO: remember the name (a new HELO replaces it)."""
        session, _ = self.current()
        session.helo = name
        self.answer(Command.HELO, await self.pipeline.helo(session, name))

    async def on_mail(self, sender: Address) -> None:
        """MAIL FROM: a new transaction."""
        self.end_transaction()
        self.tx = Transaction(sender)
        update_transaction(self.tx, self.macros)
        if self.hold_reason:
            self.tx.quarantine(self.hold_reason)
        session = self.current()[0]
        verdict = await self.pipeline.mail(session, self.tx)
        self.answer(Command.MAIL, verdict)
        if verdict is not None and verdict.is_refusal:
            # A refused sender opens no transaction (as on the SMTP listener): no on_outcome.
            self.end_transaction()

    async def on_rcpt(self, recipient: Address) -> None:
        """RCPT TO: the recipient joins the transaction unless a plugin refuses it. A recipient
        the MTA itself refused (sent because a plugin has `on_rcpt_refused`) goes to that hook."""
        session, tx = self.current()
        refused = refused_by_mta(self.macros)
        if refused is not None:
            await self.pipeline.rcpt_refused(session, tx, recipient, refused)
            self.answer(Command.RCPT, None)
            return
        made = len(tx.modifications)
        verdict = await self.pipeline.rcpt(session, tx, recipient)
        if verdict is not None and verdict.is_refusal:
            await self.pipeline.rcpt_refused(session, tx, recipient, verdict)
        elif not tx.deletes_since(made, recipient.address):
            tx.recipients.append(recipient)
        self.answer(Command.RCPT, verdict)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header: kept as it will be written, with CRLF inside folded values."""
        assert self.agreed is not None
        text = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        raw = text.decode("utf-8", "surrogateescape")
        key = name.decode("utf-8", "surrogateescape")
        self.headers.append(Header(key, raw) if self.agreed.leading_space else Header.new(key, raw))
        self.answer(Command.HEADER, None)

    def body(self) -> IO[bytes]:
        """The spool the body goes to."""
        if self.spool is None:
            self.spool = new_spool(self.settings.spool_threshold)
        return self.spool

    async def on_end_of_message(self) -> None:
        """End of message: run `on_message`, send the modifications and the verdict."""
        assert self.agreed is not None
        session, tx = self.current()
        if tx.message is None:
            tx.message = Message(self.headers, self.body(), withheld=self.agreed.withheld)
            self.spool = None
        verdict = await self.with_progress(self.pipeline.message(session, tx))
        if verdict is None or not verdict.is_refusal:
            if verdict is not None and verdict.kind is VerdictKind.QUARANTINE:
                tx.quarantine(verdict.reason or "quarantined by policy")
            missing = ungranted(tx.modifications, self.agreed)
            if missing:
                log.error(
                    "modification not offered by the MTA: message tempfailed", missing=missing
                )
                verdict = Verdict.tempfail(451, "4.3.0", "Filter cannot apply its changes")
            else:
                for action in actions(tx.modifications, tx.message, self.agreed):
                    self.reply(action)
        self.reply(verdict_reply(verdict, end_of_message=True))
        final = verdict or Verdict.accept()
        await self.pipeline.outcome(session, tx, final)
        if self.metrics is not None:
            # With headers or body withheld (no plugin reads them), the size is not known.
            self.metrics.message(session, tx, final, -1 if tx.message.withheld else tx.message.size)
        self.end_transaction()

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
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=interval)
                if done:
                    return task.result()
                # Replies queued before the end of message go first, then PROGRESS, at once.
                self.out.append(_PROGRESS)
                self.writer.write(b"".join(self.out))
                self.out.clear()
                await self.writer.drain()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))

    def _opened(self, session: Session) -> None:
        """Count a new session (the MTA's CONNECT, or one made up for a skipped CONNECT)."""
        if self.metrics is not None:
            self.metrics.session_opened(session)

    # -- endings ----------------------------------------------------------------------------------

    def end_transaction(self) -> None:
        """Forget the current message (ABORT, a new MAIL, or its end)."""
        if self.tx is not None and self.tx.message is not None:
            self.tx.message.close()
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self.tx = None
        self.headers = []

    async def end_session(self) -> None:
        """The SMTP session is over: run `on_disconnect` once."""
        self.end_transaction()
        if self.session is not None:
            session, self.session = self.session, None
            await self.pipeline.disconnect(session)
            if self.metrics is not None:
                self.metrics.session_closed(session)
        self.macros = {}
        self.hold_reason = ""


_ENCODED_OPTNEG: dict[c.OptNegReply, bytes] = {}
"""The OPTNEG answer on the wire: the same few answers on every connection."""

_HANDLERS: dict[type, Callable[[MilterConnection, Any], Awaitable[None]]] = {
    c.OptNeg: MilterConnection._optneg,
    c.Macro: MilterConnection._macro,
    c.Connect: MilterConnection.on_connect,
    c.Helo: MilterConnection._helo,
    c.Mail: MilterConnection._mail,
    c.Rcpt: MilterConnection._rcpt,
    c.Data: MilterConnection._data,
    c.Header: MilterConnection._header,
    c.EndOfHeaders: MilterConnection._end_of_headers,
    c.Body: MilterConnection._body,
    c.EndOfMessage: MilterConnection._end_of_message,
    c.Abort: MilterConnection._abort,
    c.Quit: MilterConnection._quit,
    c.QuitNoClose: MilterConnection._quit_no_close,
    c.Unknown: MilterConnection._unknown,
}
"""What each command frame the MTA sends does."""
