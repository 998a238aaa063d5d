"""The MTA side of one milter connection: connect, negotiate, send commands, read replies.

Built on the shared codec (`mailgate.milter.codec`). Every exchange writes its whole group of
frames (MACRO + command, every header + EOH, body chunks + EOB) in one write, then reads the
replies the negotiation says will come. On TCP the socket has ``TCP_NODELAY`` and
``TCP_QUICKACK`` is re-armed after every read: without them each command waits for a delayed
ACK (about 40 ms each way).

Anything wrong on the link raises `MilterFailure` with the reason; the caller applies the
milter's failure policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from mailgate.milter import codec as c
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import (
    ALL_ACTIONS,
    DEFAULT_MAX_FRAME,
    V2_ACTIONS,
    V2_STEPS,
    Action,
    Command,
    MacroStage,
    Step,
)
from mailgate.milter.translate import ACTION_NEEDS
from mailgate.sockaddr import SocketAddress

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

OFFERED_STEPS = Step(
    Step.NOCONNECT
    | Step.NOHELO
    | Step.NOMAIL
    | Step.NORCPT
    | Step.NOBODY
    | Step.NOHDRS
    | Step.NOEOH
    | Step.NR_HDR
    | Step.NOUNKNOWN
    | Step.NODATA
    | Step.SKIP
    | Step.NR_CONN
    | Step.NR_HELO
    | Step.NR_MAIL
    | Step.NR_RCPT
    | Step.NR_DATA
    | Step.NR_UNKN
    | Step.NR_EOH
    | Step.NR_BODY
    | Step.HDR_LEADSPC
    | Step.RCPT_REJ
)
"""The protocol flags the bridge honours (v6): everything except bigger body chunks."""

FINAL_REPLIES = (
    c.Accept,
    c.Continue,
    c.Discard,
    c.Reject,
    c.Tempfail,
    c.ReplyCode,
    c.Shutdown,
    c.ConnFail,
)
"""Replies that end a step."""

EOM_ACTIONS = (
    c.AddHeader,
    c.InsertHeader,
    c.ChangeHeader,
    c.ReplaceBody,
    c.AddRcpt,
    c.AddRcptPar,
    c.DelRcpt,
    c.ChangeFrom,
    c.Quarantine,
)
"""Frames a milter may send before its end-of-message reply."""

FinalReply = (
    c.Accept
    | c.Continue
    | c.Discard
    | c.Reject
    | c.Tempfail
    | c.ReplyCode
    | c.Shutdown
    | c.ConnFail
)
"""A reply that ends a step."""


_STAGE_NUMBERS = frozenset(int(s) for s in MacroStage)


class MilterFailure(Exception):
    """The milter cannot be used for this step: unreachable, hung, dead or speaking nonsense."""


class MilterGone(MilterFailure):
    """The connection was closed or reset: worth reopening once."""


class NegotiationChanged(MilterFailure):
    """The milter's OPTNEG answer differs from the one the pipelined commands were built for."""


@dataclass(slots=True)
class Answer:
    """The milter's answer to a group of commands.

    `reply` ends the step, `command` is the command it answered (None for CONTINUE);
    `actions` are the end-of-message actions, in order; `skipped` is
    true when the milter asked for no more body (SKIP); `out_of_step` when replies were still
    owed after a final one, so the connection cannot be reused.
    """

    reply: FinalReply
    command: Command | None = None
    actions: list[c.MilterReply] = field(default_factory=list)
    skipped: bool = False
    out_of_step: bool = False


def offer(version: int) -> c.OptNeg:
    """The OPTNEG the bridge sends for protocol `version` (2 or 6)."""
    if version >= 6:
        return c.OptNeg(6, int(ALL_ACTIONS), int(OFFERED_STEPS))
    return c.OptNeg(2, int(V2_ACTIONS), int(V2_STEPS))


_ENCODED_OFFERS = {v: c.encode(offer(v)) for v in (2, 6)}
_QUIT = c.encode(c.Quit())
_EOM = c.encode(c.EndOfMessage())
_CONTINUE = c.Continue()


_NEGOTIATED: dict[tuple[c.OptNeg, c.OptNegReply], Negotiated] = {}
"""Answers already checked: a milter gives the same one on every connection."""


def check_negotiation(sent: c.OptNeg, answer: c.Frame) -> Negotiated:
    """The milter's OPTNEG answer as `Negotiated`, or MilterFailure if it asks beyond the offer.

    An answer seen before gives the same (frozen) `Negotiated` object again.
    """
    if isinstance(answer, c.OptNegReply):
        agreed = _NEGOTIATED.get((sent, answer))
        if agreed is not None:
            return agreed
    agreed = _check_negotiation(sent, answer)
    assert isinstance(answer, c.OptNegReply)
    if len(_NEGOTIATED) >= 64:
        _NEGOTIATED.clear()
    _NEGOTIATED[sent, answer] = agreed
    return agreed


def _check_negotiation(sent: c.OptNeg, answer: c.Frame) -> Negotiated:
    if not isinstance(answer, c.OptNegReply):
        raise MilterFailure(f"expected OPTNEG, got {type(answer).__name__}")
    if not 2 <= answer.version <= sent.version:
        raise MilterFailure(f"milter answered protocol version {answer.version}")
    extra_actions = answer.actions & ~sent.actions
    if extra_actions:
        raise MilterFailure(f"milter asks for actions not offered: {extra_actions:#x}")
    # libmilter echoes size flags (MDS_*) it was not offered; they only matter for the body
    # chunk size, which stays at the classic 64 KiB anyway.
    protocol = answer.protocol & ~(Step.MDS_256K | Step.MDS_1M)
    extra_steps = protocol & ~sent.protocol
    if extra_steps:
        raise MilterFailure(f"milter asks for protocol steps not offered: {extra_steps:#x}")
    lists: dict[MacroStage, tuple[str, ...]] = {}
    if answer.actions & Action.SETSYMLIST:
        for stage, names in answer.macro_lists:
            if stage not in _STAGE_NUMBERS:
                raise MilterFailure(f"macro list for unknown stage {stage}")
            text = names.decode("ascii", "replace")
            lists[MacroStage(stage)] = tuple(text.replace(",", " ").split())
    return Negotiated(answer.version, Action(answer.actions), Step(protocol), lists)


class _Stream(asyncio.Protocol):
    """The milter connection's protocol: received bytes go straight into the decoder.

    No StreamReader, no read buffer: `data_received` decodes the replies as they arrive and
    wakes the one reader waiting for them (a single future per wait).
    """

    __slots__ = (
        "_deadline",
        "_decoder",
        "_drained",
        "_loop",
        "_paused",
        "_quickack",
        "_timer",
        "_waiter",
        "error",
        "frames",
        "max_response",
        "received",
        "timed_out",
        "transport",
    )

    def __init__(self, max_frame: int, max_response: int = 0) -> None:
        self.transport: asyncio.Transport | None = None
        self.frames: deque[c.Frame] = deque()
        self.error: MilterFailure | None = None
        self.timed_out = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._decoder = c.FrameDecoder("replies", max_frame=max_frame)
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quickack: Callable[[int, int, int], None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self.max_response = max_response
        """Most bytes accepted for one message (0: no bound); see `MilterClient.new_message`."""
        self.received = 0
        """Bytes received since the current message began."""

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; on TCP, remember how to re-arm TCP_QUICKACK."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if (
            _QUICKACK is not None
            and sock is not None
            and sock.family in (socket.AF_INET, socket.AF_INET6)
        ):
            # asyncio's transport has already set TCP_NODELAY on it.
            self._quickack = sock.setsockopt

    def data_received(self, data: bytes) -> None:
        """Decode the replies in `data`; wake the reader."""
        if self._quickack is not None:
            # Linux falls back to delayed ACKs after a while: re-arm after every read.
            with contextlib.suppress(OSError):
                self._quickack(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[arg-type]
        self.received += len(data)
        if self.error is None:
            if self.max_response and self.received > self.max_response:
                self.error = MilterFailure(
                    f"response too large: more than max_response_size ({self.max_response} "
                    "bytes) for one message"
                )
                if self.transport is not None:
                    self.transport.pause_reading()  # not one byte more into memory
            else:
                try:
                    self.frames.extend(self._decoder.feed(data))
                except c.MilterProtocolError as exc:
                    self.error = MilterFailure(f"bad frame: {exc}")
        self.wake()

    def eof_received(self) -> bool:
        """The milter closed its side: close ours too."""
        if self.error is None:
            self.error = MilterGone("milter closed the connection")
        self.wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Closed or reset: whoever waits (to read or to write) is told."""
        if self.error is None:
            if exc is None:
                self.error = MilterGone("milter closed the connection")
            else:
                self.error = MilterGone(f"connection lost: {exc}")
        self.wake()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        """The transport's buffer is full: `drain` waits."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport's buffer has room again."""
        self._paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- for the client -------------------------------------------------------------------------

    def wake(self) -> None:
        """Wake the reader, if one waits."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arm(self, timeout: float) -> None:
        """A reader waits from now on, for at most `timeout` seconds.

        One timer serves every wait of an exchange: a later deadline only moves `_deadline`,
        and the timer, when it fires early, sets itself again for it.
        """
        loop = self._loop
        assert loop is not None
        self.timed_out = False
        self._deadline = deadline = loop.time() + timeout
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = loop.call_at(deadline, self._check_deadline)

    def disarm(self) -> None:
        """No reader waits any more (the end of an exchange)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check_deadline)
            return
        self.timed_out = True
        self.wake()

    async def wait(self) -> None:
        """Until something was received, the connection ended or the deadline passed."""
        assert self._loop is not None
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        """Until the transport takes more data (only waits when it asked to pause)."""
        assert self._loop is not None and self.transport is not None
        while self._paused and not self.transport.is_closing():
            self._drained = self._loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None
        if self.transport.is_closing():
            raise MilterGone(f"write failed: {self.error or 'connection lost'}")


class MilterClient:
    """One connection to one milter. Not safe for concurrent use: one SMTP session owns it."""

    def __init__(
        self,
        address: SocketAddress,
        *,
        version: int = 6,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        eom_timeout: float = 60.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_response: int = 0,
        tls: ssl.SSLContext | None = None,
        tls_server_name: str = "",
    ) -> None:
        self.address = address
        self.version = version
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.eom_timeout = eom_timeout
        self.max_frame = max_frame
        self.max_response = max_response
        self.tls = tls
        self.tls_server_name = tls_server_name or address.host
        self.agreed: Negotiated | None = None
        self._writer: asyncio.Transport | None = None
        self._stream: _Stream | None = None
        self._out: list[bytes] = []
        self._unverified: c.OptNeg | None = None

    @property
    def is_open(self) -> bool:
        """True while the connection is usable (negotiated and not closed)."""
        return (
            self._writer is not None and not self._writer.is_closing() and self.agreed is not None
        )

    # -- connection -------------------------------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        stream = _Stream(self.max_frame, self.max_response)
        if self.address.path:
            await loop.create_unix_connection(lambda: stream, self.address.path)
        elif self.tls is not None:
            await loop.create_connection(
                lambda: stream,
                self.address.host,
                self.address.port,
                ssl=self.tls,
                server_hostname=self.tls_server_name,
                ssl_handshake_timeout=self.connect_timeout,
            )
        else:
            await loop.create_connection(lambda: stream, self.address.host, self.address.port)
        self._stream = stream
        self._writer = stream.transport

    async def open(self, expect: Negotiated | None = None) -> Negotiated:
        """Connect and negotiate options, within the connect timeout.

        With `expect` (what this milter agreed to on an earlier connection), the OPTNEG answer
        is not waited for: OPTNEG goes out in the same write as the first `step`'s commands,
        built for `expect`, and that step checks the answer before anything else
        (`NegotiationChanged` if it differs). One round trip less per connection.
        """
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._connect()
                sent = offer(self.version)
                self._out.append(_ENCODED_OFFERS[sent.version])
                if expect is not None:
                    self._unverified = sent
                    self.agreed = expect
                    return expect
                await self.flush()
                self.agreed = check_negotiation(sent, await self._read())
        except TimeoutError:
            self.abandon()
            raise MilterFailure(f"no connection within {self.connect_timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            self.abandon()
            why = exc.verify_message or exc.reason or str(exc)
            raise MilterFailure(
                f"TLS: the milter's certificate does not verify ({why}) for "
                f"{self.tls_server_name!r}"
            ) from None
        except ssl.SSLError as exc:
            self.abandon()
            raise MilterFailure(f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            self.abandon()
            raise MilterFailure(f"cannot connect: {exc}") from None
        except MilterFailure:
            self.abandon()
            raise
        return self.agreed

    def new_message(self) -> None:
        """A new message begins: `max_response` counts from here."""
        if self._stream is not None:
            self._stream.received = 0

    @property
    def response_size(self) -> int:
        """Bytes received from the milter since the current message began."""
        return self._stream.received if self._stream is not None else 0

    def abandon(self) -> None:
        """Drop the connection without a word (after a failure)."""
        if self._stream is not None:
            self._stream.disarm()
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._stream = None
        self.agreed = None
        self._unverified = None
        self._out.clear()

    async def close(self) -> None:
        """Say QUIT and close (the transport sends what it still holds before closing)."""
        writer = self._writer
        if writer is not None and not writer.is_closing() and self.agreed is not None:
            self._out.append(_QUIT)
            data = b"".join(self._out)
            self._out.clear()
            writer.write(data)
        self.abandon()

    # -- frames -----------------------------------------------------------------------------

    def send(self, frame: c.MilterCommand) -> None:
        """Queue a frame; `flush` writes every queued frame in one write."""
        self._out.append(c.encode(frame))

    def send_raw(self, data: bytes) -> None:
        """Queue frames already encoded."""
        self._out.append(data)

    async def flush(self) -> None:
        """Write the queued frames."""
        writer, stream = self._writer, self._stream
        if not self._out or writer is None or stream is None:
            self._out.clear()
            if writer is None:
                raise MilterGone("connection is closed")
            return
        data = b"".join(self._out)
        self._out.clear()
        if writer.is_closing():
            raise MilterGone(f"write failed: {stream.error or 'connection is closed'}")
        writer.write(data)
        if stream._paused:
            await stream.drain()

    async def _read(self) -> c.Frame:
        """The next frame, however long it takes (the caller bounds the time)."""
        stream = self._stream
        if stream is None:
            raise MilterGone("connection is closed")
        while not stream.frames:
            if stream.error is not None:
                raise stream.error
            await stream.wait()
        return stream.frames.popleft()

    async def _next(self, timeout: float) -> c.Frame | None:
        """The next frame, or None if none came within `timeout` seconds.

        A timer only when nothing is received yet: replies that came in the same segment are
        taken without one.
        """
        stream = self._stream
        if stream is None:
            raise MilterGone("connection is closed")
        frames = stream.frames
        if frames:
            return frames.popleft()
        if stream.error is not None:
            raise stream.error
        stream.arm(timeout)
        while not frames:
            if stream.error is not None:
                raise stream.error
            if stream.timed_out:
                return None
            await stream.wait()
        return frames.popleft()

    async def read(self, timeout: float) -> c.Frame:
        """The next frame, within `timeout` seconds; PROGRESS restarts the clock."""
        while True:
            frame = await self._next(timeout)
            if frame is None:
                raise MilterFailure(f"no reply within {timeout:g}s")
            if not isinstance(frame, c.Progress):
                return frame

    async def _verify_negotiation(self) -> None:
        """Read the OPTNEG answer that `open(expect=...)` left pending; check it is `agreed`."""
        sent, self._unverified = self._unverified, None
        assert sent is not None
        answer = await self._next(self.connect_timeout)
        if answer is None:
            raise MilterFailure(f"no connection within {self.connect_timeout:g}s")
        agreed = check_negotiation(sent, answer)
        if agreed is not self.agreed and agreed != self.agreed:
            raise NegotiationChanged("the milter's OPTNEG answer changed")

    # -- exchanges --------------------------------------------------------------------------

    async def step(
        self, commands: Sequence[tuple[Command, c.MilterCommand]], *, end_of_message: bool = False
    ) -> Answer:
        """Send a group of commands (and EOB, if `end_of_message`) in one write; read the
        replies they are owed, then the end-of-message actions and reply.

        The answer is the first reply that is not CONTINUE (or CONTINUE). If replies were still
        owed after it, the answer says the connection is out of step: it must not be reused.
        """
        owed = [cmd for cmd, frame in commands if self._owes(cmd, frame)]
        return await self.exchange(owed, end_of_message=end_of_message)

    async def exchange(
        self,
        owed: list[Command],
        *,
        end_of_message: bool = False,
        ignored: frozenset[int] = frozenset(),
    ) -> Answer:
        """`step` for frames already queued (encoded, with `send_raw`): `owed` lists the
        commands among them that the milter answers, in order. `owed` is extended. The replies
        at the positions in `ignored` (to recipients the MTA refused) do not count."""
        if not owed and not end_of_message and not self._out and self._unverified is None:
            if self._writer is None:
                raise MilterGone("connection is closed")
            return Answer(_CONTINUE)  # nothing to say (a step the milter declined)
        try:
            return await self._exchange(owed, end_of_message, ignored)
        finally:
            if self._stream is not None:
                self._stream.disarm()

    async def _exchange(
        self, owed: list[Command], end_of_message: bool, ignored: frozenset[int] = frozenset()
    ) -> Answer:
        if end_of_message:
            self._out.append(_EOM)
            owed.append(Command.BODYEOB)
        await self.flush()
        if self._unverified is not None:
            await self._verify_negotiation()
        answer = Answer(_CONTINUE)
        for i, cmd in enumerate(owed):
            if cmd is Command.BODYEOB:
                return await self._end_of_message(answer)
            frame = await self.read(self.command_timeout)
            if isinstance(frame, c.Skip) and cmd is Command.BODY:
                answer.skipped = True
                continue
            if not isinstance(frame, FINAL_REPLIES):
                raise MilterFailure(f"unexpected {type(frame).__name__} in reply to {cmd.name}")
            if i in ignored and not isinstance(frame, c.Shutdown | c.ConnFail):
                continue
            if not isinstance(frame, c.Continue):
                answer.reply = frame
                answer.command = cmd
                answer.out_of_step = i + 1 < len(owed)
                return answer
        return answer

    def _owes(self, command: Command, frame: c.MilterCommand) -> bool:
        self.send(frame)
        assert self.agreed is not None
        return not isinstance(frame, c.Macro) and self.agreed.replies_to(command)

    async def _end_of_message(self, answer: Answer) -> Answer:
        assert self.agreed is not None
        while True:
            frame = await self.read(self.eom_timeout)
            if isinstance(frame, FINAL_REPLIES):
                answer.reply = frame
                answer.command = Command.BODYEOB
                return answer
            if not isinstance(frame, EOM_ACTIONS):
                raise MilterFailure(f"unexpected {type(frame).__name__} at end of message")
            needed = ACTION_NEEDS[type(frame)]
            if not self.agreed.actions & needed:
                raise MilterFailure(f"{type(frame).__name__} without negotiating it")
            answer.actions.append(frame)
