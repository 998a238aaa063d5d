"""One SMTP client connection: commands in, pipeline and egress calls out, replies back.

It only translates. Decisions come from the pipeline (plugins) and the downstream (egress);
this module turns them into SMTP replies, reads DATA with `DataReader`, and makes sure the
client never hears 250 for a message before the downstream accepted it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from aiosmtpd.smtp import SMTP

from mailgate.egress import Egress, Reply
from mailgate.flow import FlowSettings, SessionFlow, Trace
from mailgate.message import Header, Message
from mailgate.pipeline import AuthenticationUnavailable, Pipeline
from mailgate.quarantine import QuarantineStore
from mailgate.session import Address, Session, Transaction
from mailgate.smtp import replies
from mailgate.smtp.auth import (
    LOGIN_PASSWORD,
    LOGIN_USERNAME,
    MAX_RESPONSE_LENGTH,
    AuthSyntaxError,
    Credentials,
    decode_login_password,
    decode_login_username,
    decode_plain,
)
from mailgate.smtp.commands import parse_params, parse_path
from mailgate.smtp.data import DataReader
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.smtp.trace import PROTOCOL_NOTE, protocol_name
from mailgate.verdict import Verdict, VerdictKind

log = structlog.get_logger("mailgate.smtp")

T = TypeVar("T")

_READ_SIZE = 1 << 16
_BODY_VALUES = ("7BIT", "8BITMIME")


@dataclass(slots=True)
class ListenerState:
    """What every connection of one listener shares."""

    settings: SmtpListenerSettings
    hostname: str
    pipeline: Callable[[], Pipeline]
    egress: Egress
    tls_context: ssl.SSLContext | None = None
    quarantine: QuarantineStore | None = None
    connections: set[SmtpConnection] = field(default_factory=set)
    cleanups: set[asyncio.Task[None]] = field(default_factory=set)


class _Closed(Exception):
    """The session is over: the client left, timed out, or was told 421."""


class _NoTimer:
    """aiosmtpd's idle timer is replaced by a timeout around each read."""

    def cancel(self) -> None:
        """Nothing to cancel."""


class SmtpConnection(SMTP):
    """The protocol object of one client connection (an aiosmtpd `SMTP` subclass)."""

    def __init__(self, state: ListenerState) -> None:
        # aiosmtpd's __init__ inspects the handler and itself on every connection (~0.7 ms);
        # this class sets only the attributes the inherited connection plumbing uses.
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(limit=_READ_SIZE),
            client_connected_cb=self._cb_client_connected,
        )
        self.loop = asyncio.get_running_loop()
        self.hostname = state.hostname
        self.enable_SMTPUTF8 = True
        self.tls_context = state.tls_context
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._original_transport = None
        self._tls_protocol = None
        self._timeout_handle = _NoTimer()  # type: ignore[assignment]
        self._state = state
        self._settings = state.settings
        self._prefetch = b""
        self._out: list[bytes] = []
        self._refused: Verdict | None = None
        self._errors = 0
        self._esmtp = False
        self._flow: SessionFlow | None = None
        self._abort_reason = "aborted by client: disconnect"
        self._commands: dict[str, Callable[[str], Awaitable[None]]] = {
            "EHLO": self._ehlo,
            "HELO": self._helo,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit,
            "STARTTLS": self._starttls,
            "VRFY": self._vrfy,
            "EXPN": self._expn,
            "HELP": self._help,
            "AUTH": self._auth,
        }

    # -- aiosmtpd plumbing ---------------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Timeouts are per read (`_read_line`, `_read_chunk`), not one idle timer."""

    def eof_received(self) -> bool | None:
        """Let the session finish the commands already received, instead of cancelling it."""
        return asyncio.StreamReaderProtocol.eof_received(self)

    async def _handle_client(self) -> None:
        self._state.connections.add(self)
        try:
            await self._serve()
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            self._abort_reason = "aborted: local error"
            log.exception("session failed")
        finally:
            self._state.connections.discard(self)
            if self.transport is not None:
                if self._out and not self.transport.is_closing():
                    self._writer.write(b"".join(self._out))
                self.transport.close()
            cleanup = self.loop.create_task(self._cleanup())
            self._state.cleanups.add(cleanup)
            cleanup.add_done_callback(self._state.cleanups.discard)

    def shut_down(self, reply: bytes) -> None:
        """Send `reply` (a 421) and close, whatever the session is doing (listener stop)."""
        if self.transport is not None:
            self._abort_reason = "aborted: listener stopped"
            self._writer.write(b"".join([*self._out, reply]))
            self._out.clear()
            self.transport.close()

    async def _cleanup(self) -> None:
        if self._flow is not None:
            await self._flow.close(self._abort_reason)

    @property
    def _session(self) -> Session:
        assert self._flow is not None
        return self._flow.session

    @property
    def _pipeline(self) -> Pipeline:
        assert self._flow is not None
        return self._flow.pipeline

    @property
    def _tx(self) -> Transaction | None:
        return None if self._flow is None else self._flow.tx

    # -- the session -------------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername") or ("", 0)
        session = Session(
            client_ip=str(peer[0]), client_port=int(peer[1]), listener=self._settings.name
        )
        s = self._settings
        self._flow = SessionFlow(
            self._state.pipeline(),
            session,
            self._state.egress,
            settings=FlowSettings(
                egress_timeout=s.egress_timeout,
                max_recipients=s.max_recipients,
                trace=Trace(self.hostname, s.add_received, s.max_received),
            ),
            quarantine=self._state.quarantine,
            before_egress=self._flush,
        )
        verdict = await self._flow.open()
        if verdict is not None and verdict.is_refusal:
            if verdict.kind is not VerdictKind.REJECT:
                await self._close_with(Reply(421, "", f"{self.hostname} {verdict.text}"))
            self._refused = verdict
            await self._send(Reply(554, "", f"{self.hostname} {verdict.text}"))
        else:
            await self._send(Reply(220, "", f"{self.hostname} {self._settings.greeting}"))
        while True:
            line = await self._read_line()
            await self._command(line)

    async def _command(self, line: bytes) -> None:
        verb_bytes, _, arg_bytes = line.rstrip(b"\r\n").partition(b" ")
        verb = verb_bytes.upper().decode("ascii", "replace")
        arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        if self._refused is not None and verb != "QUIT":
            await self._send(replies.REFUSED_SESSION)
            return
        handler = self._commands.get(verb)
        if handler is None:
            await self._send(replies.UNKNOWN_COMMAND)
            return
        try:
            await handler(arg)
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception:
            # A bug or a misbehaving plugin: the client hears "try later", never a 250.
            log.exception("command failed", command=verb)
            assert self._flow is not None
            await self._flow.abort("aborted: local error")
            await self._send(replies.LOCAL_ERROR)

    async def _send(self, reply: Reply) -> None:
        """Send one reply; count errors and close after too many.

        While the client has pipelined more complete commands, replies are held and go out
        together in one write (RFC 2920): a send() system call per reply was a third of the
        CPU under load. They are written when the input has no complete command left, and
        before anything waits on the downstream or on more input.
        """
        self._out.append(reply.smtp_reply().encode("utf-8", "surrogateescape") + b"\r\n")
        if reply.code >= 400 and reply.code != 421:
            self._errors += 1
            self._session.count("errors")
            if 0 < self._settings.max_errors < self._errors:
                await self._close_with(replies.TOO_MANY_ERRORS)
        if not self._command_waiting():
            await self._flush()

    def _command_waiting(self) -> bool:
        """True if a complete command line has already arrived."""
        return b"\n" in self._prefetch or self._reader._buffer.find(b"\n") >= 0  # type: ignore[attr-defined]

    async def _flush(self) -> None:
        """Write the held replies, in order, in one write."""
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._writer.write(data)
            await self._writer.drain()

    async def _close_with(self, reply: Reply) -> None:
        self._abort_reason = f"aborted: {reply.code} {reply.text}"
        self._out.append(reply.smtp_reply().encode("utf-8", "surrogateescape") + b"\r\n")
        self._writer.write(b"".join(self._out))
        self._out.clear()
        if self.transport is not None:
            self.transport.close()
        raise _Closed

    # -- reading -------------------------------------------------------------------------------

    async def _read_line(self, limit: int = 0) -> bytes:
        """The next command line (`limit`: longest allowed, default `max_command_length`);
        lines over the limit are answered and skipped."""
        limit = limit or self._settings.max_command_length
        if self._out and not self._command_waiting():
            await self._flush()
        while True:
            try:
                async with asyncio.timeout(self._settings.command_timeout):
                    line = await self._next_line()
            except TimeoutError:
                await self._close_with(replies.TIMEOUT)
            except asyncio.LimitOverrunError:
                await self._skip_long_line()
                line = b""
            if line and (len(line) <= limit or _auth_line(line)):
                return line
            await self._send(replies.LINE_TOO_LONG)

    async def _next_line(self) -> bytes:
        prefetch = self._prefetch
        if prefetch:
            lf = prefetch.find(b"\n")
            if lf >= 0:
                self._prefetch = prefetch[lf + 1 :]
                return prefetch[: lf + 1]
            self._prefetch = b""
            return prefetch + await self._reader.readuntil(b"\n")
        return await self._reader.readuntil(b"\n")

    async def _skip_long_line(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._settings.command_timeout):
                    await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as overrun:
                await self._reader.readexactly(overrun.consumed)
            except TimeoutError:
                await self._close_with(replies.TIMEOUT)

    async def _read_chunk(self) -> bytes:
        await self._flush()
        if self._prefetch:
            chunk, self._prefetch = self._prefetch, b""
            return chunk
        try:
            async with asyncio.timeout(self._settings.data_timeout):
                chunk = await self._reader.read(_READ_SIZE)
        except TimeoutError:
            await self._close_with(replies.TIMEOUT)
        if not chunk:
            raise _Closed
        return chunk

    # -- commands ------------------------------------------------------------------------------

    async def _helo_common(self, name: str) -> bool:
        assert self._flow is not None
        if not name:
            await self._send(replies.SYNTAX)
            return False
        await self._flow.abort("aborted by client: HELO/EHLO")
        verdict = await self._flow.helo(name)
        if verdict is not None and verdict.is_refusal:
            await self._refuse(verdict)
            return False
        return True

    async def _ehlo(self, arg: str) -> None:
        if not await self._helo_common(arg):
            return
        self._esmtp = True
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self._settings.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "DSN",
        ]
        if self.tls_context is not None and not self._session.tls:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH " + " ".join(self._settings.auth_mechanisms))
        lines.append("ENHANCEDSTATUSCODES")
        await self._send(Reply(250, "", "\n".join(lines)))

    async def _helo(self, arg: str) -> None:
        if await self._helo_common(arg):
            self._esmtp = False
            await self._send(Reply(250, "", self.hostname))

    async def _noop(self, arg: str) -> None:
        await self._send(replies.OK)

    async def _rset(self, arg: str) -> None:
        assert self._flow is not None
        await self._flow.abort("aborted by client: RSET")
        await self._send(replies.OK)

    async def _quit(self, arg: str) -> None:
        assert self._flow is not None
        await self._flow.abort("aborted by client: QUIT")
        self._writer.write(b"".join([*self._out, replies.BYE.smtp_reply().encode() + b"\r\n"]))
        self._out.clear()
        raise _Closed

    async def _vrfy(self, arg: str) -> None:
        await self._send(replies.VRFY if arg else replies.SYNTAX)

    async def _expn(self, arg: str) -> None:
        await self._send(replies.EXPN)

    async def _help(self, arg: str) -> None:
        await self._send(replies.HELP)

    async def _starttls(self, arg: str) -> None:
        assert self._flow is not None
        session = self._session
        if self.tls_context is None or session.tls:
            await self._send(replies.TLS_UNAVAILABLE)
            return
        if arg:
            await self._send(replies.SYNTAX)
            return
        await self._flow.abort("aborted by client: STARTTLS")
        # Anything sent after STARTTLS in clear text is an injection attempt (CVE-2011-0411).
        self._prefetch = b""
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        await self._send(replies.START_TLS)
        try:
            await self._writer.start_tls(self.tls_context)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake failed", reason=str(exc))
            raise _Closed from exc
        self.transport = self._writer.transport
        ssl_object = self.transport.get_extra_info("ssl_object")
        session.tls = True
        session.helo = ""
        session.auth_login = ""  # RFC 3207: forget what the clear-text session established
        if ssl_object is not None:
            session.tls_version = ssl_object.version() or ""
            cipher = ssl_object.cipher()
            session.tls_cipher = cipher[0] if cipher else ""
        log.info("TLS started", version=session.tls_version, cipher=session.tls_cipher)

    # -- authentication ------------------------------------------------------------------------

    def _auth_offered(self) -> bool:
        """AUTH is in the EHLO reply: a plugin can check credentials, and TLS is on if needed."""
        return (
            bool(self._settings.auth_mechanisms)
            and self._pipeline.implements("authenticate")
            and (self._session.tls or not self._settings.auth_require_tls)
        )

    async def _auth(self, arg: str) -> None:
        problem = self._auth_refusal()
        if problem is not None:
            await self._send(problem)
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip()
        if mechanism not in self._settings.auth_mechanisms:
            await self._send(replies.AUTH_UNKNOWN_MECHANISM if mechanism else replies.SYNTAX)
            return
        try:
            credentials = await self._auth_exchange(mechanism, initial or None)
        except AuthSyntaxError:
            await self._send(replies.AUTH_UNDECODABLE)
            return
        if credentials is None:
            await self._send(replies.AUTH_CANCELLED)
            return
        await self._check_credentials(mechanism, credentials)

    def _auth_refusal(self) -> Reply | None:
        """Why AUTH cannot be given now (RFC 4954 section 4), or None."""
        if not self._settings.auth_mechanisms or not self._pipeline.implements("authenticate"):
            return replies.AUTH_NOT_OFFERED
        if not self._esmtp or not self._session.helo:
            return replies.NEED_HELO
        if self._settings.auth_require_tls and not self._session.tls:
            return replies.AUTH_NEEDS_TLS
        if self._session.auth_login:
            return replies.AUTH_TWICE
        if self._tx is not None:
            return replies.AUTH_IN_TRANSACTION
        return None

    async def _auth_exchange(self, mechanism: str, initial: str | None) -> Credentials | None:
        """Read the client's responses; None if it cancelled with ``*``."""
        if mechanism == "PLAIN":
            response = initial if initial is not None else await self._auth_response("")
            return None if response is None else decode_plain(response)
        if initial is None:
            initial = await self._auth_response(LOGIN_USERNAME)
            if initial is None:
                return None
        login = decode_login_username(initial)
        secret = await self._auth_response(LOGIN_PASSWORD)
        return None if secret is None else Credentials(login, decode_login_password(secret))

    async def _auth_response(self, challenge: str) -> str | None:
        """Send a ``334`` challenge and read the response line; None for ``*`` (cancel)."""
        self._out.append(b"334 " + challenge.encode("ascii") + b"\r\n")
        line = (await self._read_line(MAX_RESPONSE_LENGTH)).rstrip(b"\r\n").strip()
        if line == b"*":
            return None
        return line.decode("ascii", "replace")

    async def _check_credentials(self, mechanism: str, credentials: Credentials) -> None:
        """Ask the plugins; a plugin failure is a temporary failure, not a wrong password."""
        try:
            ok = await self._pipeline.authenticate(
                self._session, mechanism, credentials.login, credentials.secret
            )
        except AuthenticationUnavailable as exc:
            log.warning(
                "authentication error",
                mechanism=mechanism,
                login=credentials.login,
                plugin=str(exc),
            )
            await self._send(replies.AUTH_TEMPFAIL)
            return
        if not ok:
            log.info("authentication failed", mechanism=mechanism, login=credentials.login)
            self._session.count("auth_failures")
            await self._flush()
            await asyncio.sleep(self._settings.auth_failure_delay)
            await self._send(replies.AUTH_FAILED)
            return
        self._session.auth_login = credentials.login
        log.info("authenticated", mechanism=mechanism, login=credentials.login)
        await self._send(replies.AUTH_OK)

    # -- envelope ------------------------------------------------------------------------------

    async def _mail(self, arg: str) -> None:
        if not self._session.helo:
            await self._send(replies.NEED_HELO)
            return
        if self._tx is not None:
            await self._send(replies.NESTED_MAIL)
            return
        parsed = self._parse_envelope_arg(arg, "FROM:")
        if parsed is None:
            await self._send(replies.SYNTAX)
            return
        address, params, raw_params = parsed
        problem = self._check_mail_params(address, params)
        if problem is not None:
            await self._send(problem)
            return
        notes = {
            PROTOCOL_NOTE: protocol_name(
                esmtp=self._esmtp,
                tls=self._session.tls,
                authenticated=bool(self._session.auth_login),
                smtputf8=any(p.upper() == "SMTPUTF8" for p in raw_params),
            )
        }
        assert self._flow is not None
        verdict = await self._flow.mail(Address(address, raw_params), notes)
        if verdict is not None and verdict.is_refusal:
            await self._refuse(verdict)
            return
        await self._send(replies.SENDER_OK)

    def _check_mail_params(self, address: str, params: dict[str, str | None]) -> Reply | None:
        size = params.pop("SIZE", None)
        body = params.pop("BODY", "7BIT")
        smtputf8 = "SMTPUTF8" in params
        params.pop("SMTPUTF8", None)
        params.pop("AUTH", None)  # RFC 4954 section 5: accepted; the relay does not pass it on
        ret = params.pop("RET", "FULL")
        envid = params.pop("ENVID", "")
        if params or (size is not None and not size.isdigit()):
            return replies.UNKNOWN_PARAMETER if params else replies.SYNTAX
        if body is None or body.upper() not in _BODY_VALUES:
            return replies.SYNTAX
        if ret is None or ret.upper() not in ("FULL", "HDRS") or envid is None:
            return replies.SYNTAX
        if size is not None and int(size) > self._settings.max_message_size:
            return replies.message_too_big(self._settings.max_message_size)
        if not smtputf8 and not address.isascii():
            return replies.NO_SMTPUTF8
        return None

    async def _rcpt(self, arg: str) -> None:
        tx = self._tx
        if tx is None or self._flow is None:
            await self._send(replies.NEED_MAIL)
            return
        parsed = self._parse_envelope_arg(arg, "TO:")
        if parsed is None or not parsed[0]:
            await self._send(replies.SYNTAX)
            return
        address, params, raw_params = parsed
        if not _valid_dsn_rcpt_params(params):
            await self._send(replies.UNKNOWN_PARAMETER)
            return
        if not address.isascii() and not any(p.upper() == "SMTPUTF8" for p in tx.sender.params):
            await self._send(replies.NO_SMTPUTF8)
            return
        verdict = await self._flow.rcpt(Address(address, raw_params))
        if verdict is not None and verdict.is_refusal:
            await self._refuse(verdict)
            return
        await self._send(replies.RECIPIENT_OK)

    @staticmethod
    def _parse_envelope_arg(
        arg: str, keyword: str
    ) -> tuple[str, dict[str, str | None], list[str]] | None:
        if arg[: len(keyword)].upper() != keyword:
            return None
        split = parse_path(arg[len(keyword) :])
        if split is None:
            return None
        params = parse_params(split[1])
        if params is None:
            return None
        return split[0], params, split[1].split()

    # -- data ----------------------------------------------------------------------------------

    async def _data(self, arg: str) -> None:
        tx = self._tx
        if tx is None:
            await self._send(replies.NEED_MAIL)
            return
        if not tx.recipients:
            await self._send(replies.NEED_RCPT)
            return
        if arg:
            await self._send(replies.SYNTAX)
            return
        assert self._flow is not None
        verdict = await self._flow.data()
        if verdict is not None and verdict.is_refusal:
            await self._finish(verdict, replies.from_verdict(verdict))
            return
        await self._send(replies.START_DATA)
        reader = self._settings.new_data_reader()
        try:
            headers, header_verdict = await self._read_data(reader)
        except BaseException:
            reader.close()
            raise
        if reader.problem is not None:
            reader.close()
            s = self._settings
            reply = replies.data_refused(
                reader.problem,
                max_line=s.max_line_length,
                max_header=s.max_header_size,
                max_size=s.max_message_size,
            )
            await self._finish(replies.to_verdict(reply, reason=reader.problem.name), reply)
            return
        tx.message = Message(headers, reader.body)
        if header_verdict is not None and header_verdict.is_refusal:
            await self._finish(header_verdict, replies.from_verdict(header_verdict))
            return
        ending = await self._flow.end_of_data()
        if ending.delivered:
            self._errors = 0
        await self._answer_end(ending.verdict, ending.reply)

    async def _read_data(self, reader: DataReader) -> tuple[list[Header], Verdict | None]:
        """Read to the real end of data; run `on_headers` as soon as the header block is in."""
        assert self._flow is not None
        headers: list[Header] | None = None
        verdict: Verdict | None = None
        while True:
            chunk = await self._read_chunk()
            used = reader.feed(chunk)
            if headers is None and reader.headers_complete and reader.problem is None:
                headers = reader.headers
                verdict = await self._flow.headers(headers)
            if used >= 0:
                self._prefetch = chunk[used:]
                return headers or [], verdict

    async def _finish(self, verdict: Verdict, answer: Reply) -> None:
        """End the transaction with `verdict` and answer the client."""
        assert self._flow is not None
        await self._flow.finish(verdict, answer)
        await self._answer_end(verdict, answer)

    async def _answer_end(self, verdict: Verdict, answer: Reply) -> None:
        if verdict.kind is VerdictKind.DISCONNECT:
            await self._close_with(answer)
        await self._send(answer)

    async def _refuse(self, verdict: Verdict) -> None:
        """Answer a refused command; a disconnect verdict also ends the transaction and closes."""
        if verdict.kind is VerdictKind.DISCONNECT:
            assert self._flow is not None
            if self._flow.tx is not None:
                await self._flow.finish(verdict, replies.from_verdict(verdict))
            await self._close_with(replies.from_verdict(verdict))
        await self._send(replies.from_verdict(verdict))


def _auth_line(line: bytes) -> bool:
    """AUTH command lines may be longer than other commands (RFC 4954 section 4)."""
    return len(line) <= MAX_RESPONSE_LENGTH and line[:5].upper() == b"AUTH "


def _valid_dsn_rcpt_params(params: dict[str, str | None]) -> bool:
    """RCPT TO takes only the DSN parameters NOTIFY and ORCPT (RFC 3461)."""
    notify = params.pop("NOTIFY", "FAILURE")
    orcpt = params.pop("ORCPT", "rfc822;x")
    if params or notify is None or orcpt is None or ";" not in orcpt:
        return False
    words = set(notify.upper().split(","))
    return words == {"NEVER"} or words <= {"SUCCESS", "FAILURE", "DELAY"}
