"""One SMTP client session: commands in, calls on the session's flow, replies back.

It only translates: the bytes come and go through `SmtpStream` (an asyncio Protocol with its
own buffer), AUTH is `Authentication`'s, and every decision comes from the flow
(`mailgate.flow`: the plugins and the egress). It makes sure the client never hears 250 for a
message that the flow did not hand over or hold.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import overload

from mailgate.egress import Egress, Reply
from mailgate.flow import FlowSettings, SessionFlow, Trace
from mailgate.logging import get_logger
from mailgate.message import Header, Message
from mailgate.pipeline import Pipeline
from mailgate.quarantine import Quarantine
from mailgate.session import Address, Session, Transaction
from mailgate.smtp import replies
from mailgate.smtp.auth import MAX_RESPONSE_LENGTH
from mailgate.smtp.authentication import Authentication, ResponseTooLong
from mailgate.smtp.bdat import DATA_AFTER_BDAT, ChunkedMessage, chunk_accepted, parse_bdat
from mailgate.smtp.bdat import SYNTAX as BDAT_SYNTAX
from mailgate.smtp.commands import parse_params, parse_path
from mailgate.smtp.data import DataProblem, DataReader
from mailgate.smtp.proxy_protocol import ProxyHeaderError, read_proxy_header
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.smtp.stream import SmtpStream, StreamClosed
from mailgate.smtp.trace import PROTOCOL_NOTE, protocol_name
from mailgate.syntax import ascii_number, valid_orcpt, valid_utf8, valid_xtext
from mailgate.verdict import Verdict, VerdictKind

log = get_logger("mailgate.smtp")

_BODY_VALUES = ("7BIT", "8BITMIME")
_MAX_ENVID = 100
"""RFC 3461 section 4.4: an ENVID is at most 100 characters."""


@dataclass(slots=True)
class ListenerState:
    """What every connection of one listener shares."""

    settings: SmtpListenerSettings
    hostname: str
    pipeline: Callable[[], Pipeline]
    egress: Egress
    tls_context: ssl.SSLContext | None = None
    quarantine: Quarantine | None = None
    connections: set[SmtpConnection] = field(default_factory=set)
    per_client: dict[str, int] = field(default_factory=dict)
    """Open sessions by client address (`max_sessions_per_client`)."""


class _Closed(Exception):
    """The session is over: the client left, timed out, or was told 421."""


class SmtpConnection:
    """One client session on `stream` (see the module docstring)."""

    def __init__(self, state: ListenerState, stream: SmtpStream) -> None:
        self._state = state
        self._settings = state.settings
        self._stream = stream
        self.hostname = state.hostname
        self._refused: Verdict | None = None
        self._errors = 0
        self._junk = 0
        self._mail_at = 0.0
        self._esmtp = False
        self._flow: SessionFlow | None = None
        self._auth: Authentication | None = None
        self._abort_reason = "aborted by client: disconnect"
        self._client: tuple[str, int] = ("", 0)
        self._chunked: ChunkedMessage | None = None
        """The message arriving in BDAT chunks, if one is."""
        self._bdat_failed: Reply | None = None
        """The refusal of a BDAT message: repeated to the chunks the client had already sent
        (pipelined) until its last chunk or another command."""
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
            "AUTH": self._auth_command,
            "BDAT": self._bdat,
        }

    async def run(self) -> None:
        """Serve the session until QUIT, a timeout, a 421 or the client leaving; then close
        its flow (abort what is open, ``on_disconnect``)."""
        state = self._state
        proxied = await self._client_address()
        if proxied is None:
            self._stream.write_and_close()
            return
        self._client = proxied
        client = proxied[0]
        too_many = self._over_limit(client)
        if too_many is not None:
            log.info("session refused", client=client, reply=too_many.smtp_reply())
            self._stream.write_and_close(too_many.smtp_reply().encode() + b"\r\n")
            return
        state.connections.add(self)
        state.per_client[client] = state.per_client.get(client, 0) + 1
        try:
            await self._serve()
        except (_Closed, StreamClosed, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            self._abort_reason = "aborted: local error"
            log.exception("session failed")
        finally:
            state.connections.discard(self)
            left = state.per_client.pop(client, 1) - 1
            if left > 0:
                state.per_client[client] = left
            self._stream.write_and_close()
            if self._chunked is not None:
                self._chunked.close()
            if self._flow is not None:
                await self._flow.close(self._abort_reason)

    async def _client_address(self) -> tuple[str, int] | None:
        """The client's address and port: the connection's own or, with the PROXY protocol on,
        the one in the trusted proxy's header. None: the connection is refused (logged)."""
        peer = self._stream.peer
        s = self._settings
        if not s.proxy_versions:
            return peer
        if not s.trusted_proxy(peer[0]):
            log.warning("PROXY protocol: untrusted source refused", source=peer[0], port=peer[1])
            return None
        try:
            header = await read_proxy_header(self._stream, s.proxy_versions, s.proxy_timeout)
        except ProxyHeaderError as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"no complete header in {s.proxy_timeout} s"
        except (StreamClosed, ConnectionError):
            reason = "closed before its header"
        else:
            if header.source is None:
                return peer  # a health check (LOCAL) or no TCP addresses: the proxy itself
            return header.source
        log.warning("PROXY protocol: connection closed", proxy=peer[0], reason=reason)
        return None

    def _over_limit(self, client: str) -> Reply | None:
        """The 421 for a session over `max_sessions` or `max_sessions_per_client`, or None."""
        s, state = self._settings, self._state
        if s.max_sessions and len(state.connections) >= s.max_sessions:
            return replies.TOO_MANY_SESSIONS
        if s.max_sessions_per_client and state.per_client.get(client, 0) >= (
            s.max_sessions_per_client
        ):
            return replies.TOO_MANY_FROM_CLIENT
        return None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task serving this session."""
        return self._stream.task

    def shut_down(self, reply: bytes) -> None:
        """Send `reply` (a 421) and close, whatever the session is doing (listener stop)."""
        self._abort_reason = "aborted: listener stopped"
        self._stream.write_and_close(reply)

    @property
    def _session(self) -> Session:
        assert self._flow is not None
        return self._flow.session

    @property
    def _tx(self) -> Transaction | None:
        return None if self._flow is None else self._flow.tx

    # -- the session -------------------------------------------------------------------------

    async def _serve(self) -> None:
        host, port = self._client
        session = Session(client_ip=host, client_port=port, listener=self._settings.name)
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
            before_egress=self._stream.flush,
        )
        self._auth = Authentication(s, self._flow)
        verdict = await self._flow.open()
        if verdict is not None and verdict.is_refusal:
            if verdict.kind is not VerdictKind.REJECT:
                await self._close_with(Reply(421, "", f"{self.hostname} {verdict.text}"))
            self._refused = verdict
            await self.send(Reply(554, "", f"{self.hostname} {verdict.text}"))
        else:
            await self.send(Reply(220, "", f"{self.hostname} {self._settings.greeting}"))
        while True:
            line = await self._read_line()
            await self._command(line)

    async def _command(self, line: bytes) -> None:
        verb_bytes, _, arg_bytes = line.rstrip(b"\r\n").partition(b" ")
        verb = verb_bytes.upper().decode("ascii", "replace")
        arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        if verb != "BDAT":
            self._bdat_failed = None
        if self._chunked is not None and self._chunked.tx is not self._tx:
            self._chunked.close()  # its transaction ended (RSET, EHLO, ...)
            self._chunked = None
        if self._refused is not None and verb != "QUIT":
            await self.send(replies.REFUSED_SESSION)
            return
        handler = self._commands.get(verb)
        if handler is None:
            await self._unknown(line)
            return
        try:
            await handler(arg)
        except (_Closed, StreamClosed, ConnectionError):
            raise
        except Exception:
            # A bug or a misbehaving plugin: the client hears "try later", never a 250.
            log.exception("command failed", command=verb)
            assert self._flow is not None
            await self._flow.abort("aborted: local error")
            await self.send(replies.LOCAL_ERROR)

    # -- replies ---------------------------------------------------------------------------------

    async def send(self, reply: Reply, *, count_error: bool = True) -> None:
        """Send one reply; count errors (unless not `count_error`) and close after too many.

        While the client has pipelined more complete commands, replies are held and go out
        together in one write (RFC 2920): a send() system call per reply was a third of the
        CPU under load. They are written when the input has no complete command left, and
        before anything waits on the downstream or on more input.
        """
        self._stream.queue(reply.smtp_reply().encode("utf-8", "surrogateescape") + b"\r\n")
        if reply.code >= 400 and reply.code != 421 and count_error:
            self._errors += 1
            self._session.count("errors")
            if 0 < self._settings.max_errors < self._errors:
                await self._close_with(replies.TOO_MANY_ERRORS)
        if not self._stream.line_waiting():
            await self._stream.flush()

    async def flush(self) -> None:
        """`Authentication`'s way to write held replies now."""
        await self._stream.flush()

    async def challenge(self, text: str) -> str | None:
        """Send a ``334`` challenge and read the response line; None for ``*`` (cancel)."""
        self._stream.queue(b"334 " + text.encode("ascii") + b"\r\n")
        raw = await self._read_line(MAX_RESPONSE_LENGTH, skip_long=False)
        if raw is None:
            raise ResponseTooLong
        line = raw.rstrip(b"\r\n").strip()
        if line == b"*":
            return None
        return line.decode("ascii", "replace")

    async def _close_with(self, reply: Reply) -> None:
        self._abort_reason = f"aborted: {reply.code} {reply.text}"
        self._stream.write_and_close(
            reply.smtp_reply().encode("utf-8", "surrogateescape") + b"\r\n"
        )
        raise _Closed

    # -- reading -------------------------------------------------------------------------------

    @overload
    async def _read_line(self, limit: int = 0) -> bytes: ...

    @overload
    async def _read_line(self, limit: int, *, skip_long: bool) -> bytes | None: ...

    async def _read_line(self, limit: int = 0, *, skip_long: bool = True) -> bytes | None:
        """The next command line (`limit`: longest allowed, default `max_command_length`);
        lines over the limit are answered and skipped, or (`skip_long` false) None: an AUTH
        response that is too long ends the exchange, the next line is a new command."""
        limit = limit or self._settings.max_command_length
        stream = self._stream
        if stream.queued and not stream.line_waiting():
            await stream.flush()
        while True:
            timeout, expired = self._wait_limit(self._settings.command_timeout, replies.TIMEOUT)
            try:
                line = await stream.read_line(max(limit, MAX_RESPONSE_LENGTH), timeout)
            except TimeoutError:
                await self._close_with(expired)
            if line and (len(line) <= limit or _auth_line(line)):
                return line
            if not skip_long:
                return None
            await self.send(replies.LINE_TOO_LONG)

    def _wait_limit(self, timeout: float, reply: Reply) -> tuple[float, Reply]:
        """How long the next read may wait, and the 421 when it does not end in time: the
        read's own timeout, or less when the transaction's deadlines come first."""
        tx, s = self._tx, self._settings
        if tx is None:
            return timeout, reply
        now = asyncio.get_running_loop().time()
        limits = [(timeout, reply)]
        if s.transaction_timeout:
            limits.append(
                (self._mail_at + s.transaction_timeout - now, replies.TRANSACTION_TIMEOUT)
            )
        if s.envelope_timeout and not tx.recipients:
            limits.append((self._mail_at + s.envelope_timeout - now, replies.ENVELOPE_TIMEOUT))
        wait, expired = min(limits, key=lambda limit: limit[0])
        return max(wait, 0.0), expired

    async def _read_chunk(self, started: float, received: int, limit: int = 0) -> bytes:
        """The next DATA bytes (at most `limit`, if not 0); `started` and `received` so far
        keep the minimum rate."""
        await self._stream.flush()
        s = self._settings
        timeout, expired = self._wait_limit(s.data_timeout, replies.TIMEOUT)
        if s.data_min_rate:
            # The latest moment the next byte may come and the average still be the minimum.
            by_rate = started + max(s.data_rate_grace, (received + 1) / s.data_min_rate)
            left = by_rate - asyncio.get_running_loop().time()
            if left < timeout:
                timeout, expired = max(left, 0.0), replies.DATA_TOO_SLOW
        try:
            return await self._stream.read_chunk(timeout, limit)
        except TimeoutError:
            await self._close_with(expired)
            raise  # not reached: _close_with raises

    # -- commands ------------------------------------------------------------------------------

    async def _helo_common(self, name: str) -> bool:
        assert self._flow is not None
        if not name:
            await self.send(replies.SYNTAX)
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
            f"SIZE {self._settings.max_message_size.value(self._session)}",
            "8BITMIME",
            "SMTPUTF8",
            "DSN",
        ]
        if self._state.tls_context is not None and not self._session.tls:
            lines.append("STARTTLS")
        assert self._auth is not None
        if self._auth.offered():
            lines.append("AUTH " + " ".join(self._settings.auth_mechanisms))
        lines.append("CHUNKING")
        lines.append("ENHANCEDSTATUSCODES")
        await self.send(Reply(250, "", "\n".join(lines)))

    async def _helo(self, arg: str) -> None:
        if await self._helo_common(arg):
            self._esmtp = False
            await self.send(Reply(250, "", self.hostname))

    async def _junk_command(self) -> None:
        """Count a command that makes no progress; too many close the session."""
        self._junk += 1
        limit = self._settings.max_junk_commands
        if limit and self._junk > limit:
            await self._close_with(replies.TOO_MANY_JUNK)

    async def _noop(self, arg: str) -> None:
        await self._junk_command()
        await self.send(replies.OK)

    async def _rset(self, arg: str) -> None:
        await self._junk_command()
        assert self._flow is not None
        await self._flow.abort("aborted by client: RSET")
        await self.send(replies.OK)

    async def _quit(self, arg: str) -> None:
        assert self._flow is not None
        await self._flow.abort("aborted by client: QUIT")
        self._stream.queue(replies.BYE.smtp_reply().encode() + b"\r\n")
        raise _Closed

    async def _vrfy(self, arg: str) -> None:
        await self._junk_command()
        await self.send(replies.VRFY if arg else replies.SYNTAX)

    async def _expn(self, arg: str) -> None:
        await self._junk_command()
        await self.send(replies.EXPN)

    async def _help(self, arg: str) -> None:
        await self._junk_command()
        await self.send(replies.HELP)

    async def _starttls(self, arg: str) -> None:
        assert self._flow is not None
        session = self._session
        context = self._state.tls_context
        if context is None or session.tls:
            await self.send(replies.TLS_UNAVAILABLE)
            return
        if arg:
            await self.send(replies.SYNTAX)
            return
        await self._flow.abort("aborted by client: STARTTLS")
        # Anything sent after STARTTLS in clear text is an injection attempt (CVE-2011-0411).
        self._stream.discard_input()
        await self.send(replies.START_TLS)
        await self._stream.flush()
        try:
            await self._stream.start_tls(context, self._settings.command_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            log.info("TLS handshake failed", reason=str(exc))
            raise _Closed from exc
        ssl_object = self._stream.extra("ssl_object")
        session.tls = True
        session.helo = ""
        session.auth_login = ""  # RFC 3207: forget what the clear-text session established
        if ssl_object is not None:
            session.tls_version = ssl_object.version() or ""
            cipher = ssl_object.cipher()
            session.tls_cipher = cipher[0] if cipher else ""
        log.info("TLS started", version=session.tls_version, cipher=session.tls_cipher)

    async def _auth_command(self, arg: str) -> None:
        assert self._auth is not None
        await self._auth.run(arg, self._esmtp, self)

    # -- envelope ------------------------------------------------------------------------------

    async def _mail(self, arg: str) -> None:
        if not self._session.helo:
            await self.send(replies.NEED_HELO)
            return
        if self._tx is not None:
            await self.send(replies.NESTED_MAIL)
            return
        parsed = self._parse_envelope_arg(arg, "FROM:")
        if parsed is None:
            await self.send(replies.SYNTAX)
            return
        address, params, raw_params = parsed
        problem = self._check_mail_params(address, params, raw_params)
        if problem is not None:
            await self.send(problem)
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
        self._mail_at = asyncio.get_running_loop().time()
        self._junk = 0
        await self.send(replies.SENDER_OK)

    def _check_mail_params(
        self, address: str, params: dict[str, str | None], raw_params: list[str]
    ) -> Reply | None:
        if params and not self._esmtp:
            return replies.UNKNOWN_PARAMETER  # RFC 5321 4.1.1.11: only after EHLO
        size_text = params.pop("SIZE", None)
        body = params.pop("BODY", "7BIT")
        smtputf8 = "SMTPUTF8" in params
        if params.pop("SMTPUTF8", None) is not None:
            return replies.SYNTAX  # SMTPUTF8 takes no value
        params.pop("AUTH", None)  # RFC 4954 section 5: accepted; the relay does not pass it on
        ret = params.pop("RET", "FULL")
        envid = params.pop("ENVID", "")
        if params:
            return replies.UNKNOWN_PARAMETER
        size = None if size_text is None else ascii_number(size_text)
        if size_text is not None and size is None:
            return replies.SYNTAX
        if body is None or body.upper() not in _BODY_VALUES:
            return replies.SYNTAX
        if ret is None or ret.upper() not in ("FULL", "HDRS") or envid is None:
            return replies.SYNTAX
        if envid and (len(envid) > _MAX_ENVID or not valid_xtext(envid)):
            return replies.SYNTAX
        if size is not None:
            limit = self._mail_size_limit(address, raw_params)
            if size > limit:
                return replies.message_too_big(limit)
        if not valid_utf8(address):
            return replies.BAD_ADDRESS
        if not smtputf8 and not address.isascii():
            return replies.NO_SMTPUTF8
        return None

    def _mail_size_limit(self, address: str, raw_params: list[str]) -> int:
        """`max_message_size` for a MAIL FROM's SIZE=: its rules see this sender (and the
        session), not yet any recipient."""
        setting = self._settings.max_message_size
        if setting.is_fixed:
            return setting.default
        return setting.value(self._session, Transaction(sender=Address(address, raw_params)))

    def _size_limit(self, tx: Transaction) -> int:
        """The transaction's `max_message_size`, enforced on its data (DATA or BDAT)."""
        return self._settings.max_message_size.value(self._session, tx)

    async def _rcpt(self, arg: str) -> None:
        tx = self._tx
        if tx is None or self._flow is None:
            await self.send(replies.NEED_MAIL)
            return
        parsed = self._parse_envelope_arg(arg, "TO:")
        if parsed is None or not parsed[0]:
            await self.send(replies.SYNTAX)
            return
        address, params, raw_params = parsed
        if params and not self._esmtp:
            await self.send(replies.UNKNOWN_PARAMETER)  # RFC 5321 4.1.1.11: only after EHLO
            return
        problem = _dsn_rcpt_problem(params)
        if problem is not None:
            await self.send(problem)
            return
        if not valid_utf8(address):
            await self.send(replies.BAD_ADDRESS)
            return
        if not address.isascii() and not any(p.upper() == "SMTPUTF8" for p in tx.sender.params):
            await self.send(replies.NO_SMTPUTF8)
            return
        verdict = await self._flow.rcpt(Address(address, raw_params))
        if verdict is not None and verdict.is_refusal:
            await self._refuse(verdict)
            return
        self._junk = 0
        await self.send(replies.RECIPIENT_OK)

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
            await self.send(replies.NEED_MAIL)
            return
        if not tx.recipients:
            await self.send(replies.NEED_RCPT)
            return
        if self._chunked is not None and self._chunked.tx is tx:
            await self.send(DATA_AFTER_BDAT)
            return
        if arg:
            await self.send(replies.SYNTAX)
            return
        assert self._flow is not None
        verdict = await self._flow.data()
        if verdict is not None and verdict.is_refusal:
            await self._finish(verdict, replies.from_verdict(verdict))
            return
        await self.send(replies.START_DATA)
        max_size = self._size_limit(tx)
        reader = self._settings.new_data_reader(max_size=max_size)
        try:
            headers, header_verdict = await self._read_data(reader)
        except (_Closed, StreamClosed, ConnectionError, asyncio.CancelledError):
            reader.close()
            raise
        except Exception:
            # Where the data ends is unknown now: what follows must not be read as commands.
            reader.close()
            log.exception("reading the data failed")
            await self._close_with(replies.LOCAL_ERROR_CLOSING)
        if reader.problem is not None:
            reader.close()
            s = self._settings
            reply = replies.data_refused(
                reader.problem,
                max_line=s.max_line_length,
                max_header=s.max_header_size,
                max_size=max_size,
            )
            await self._finish(replies.to_verdict(reply, reason=reader.problem.name), reply)
            return
        tx.message = Message(headers, reader.body)
        if header_verdict is not None and header_verdict.is_refusal:
            await self._finish(header_verdict, replies.from_verdict(header_verdict))
            return
        ending = await self._flow.end_of_data()
        if ending.delivered:
            self._errors = self._junk = 0
        await self._answer_end(ending.verdict, ending.reply)

    async def _read_data(self, reader: DataReader) -> tuple[list[Header], Verdict | None]:
        """Read to the real end of data; run `on_headers` as soon as the header block is in."""
        assert self._flow is not None
        headers: list[Header] | None = None
        verdict: Verdict | None = None
        started, received = asyncio.get_running_loop().time(), 0
        while True:
            chunk = await self._read_chunk(started, received)
            received += len(chunk)
            used = reader.feed(chunk)
            if headers is None and reader.headers_complete and reader.problem is None:
                headers = reader.headers
                verdict = await self._flow.headers(headers)
            if used >= 0:
                self._stream.unread(chunk[used:])
                return headers or [], verdict

    # -- BDAT ------------------------------------------------------------------------------------

    async def _bdat(self, arg: str) -> None:
        """One BDAT chunk (RFC 3030). Its bytes are always read, whatever the answer, so the
        next command is found where the client put it; only a size that cannot be read
        ends the session."""
        parsed = parse_bdat(arg)
        if parsed is None:
            log.info("malformed BDAT, closing", argument=arg[:40])
            await self._close_with(BDAT_SYNTAX)
            return
        size, last = parsed
        self._session.count("bdat_chunks")
        tx, s = self._tx, self._settings
        if tx is None or not tx.recipients:
            await self._skip_chunk(size)
            failed = self._bdat_failed
            if failed is not None:
                self._bdat_failed = None if last else failed
                await self._junk_command()
                await self.send(failed, count_error=False)
            else:
                await self.send(replies.NEED_MAIL if tx is None else replies.NEED_RCPT)
            return
        assert self._flow is not None
        chunked = self._chunked
        if chunked is None or chunked.tx is not tx:
            verdict = await self._flow.data()
            if verdict is not None and verdict.is_refusal:
                await self._skip_chunk(size)
                await self._bdat_refused(verdict, replies.from_verdict(verdict), last)
                return
            max_size = self._size_limit(tx)
            reader = s.new_data_reader(dot_stuffed=False, max_size=max_size)
            chunked = self._chunked = ChunkedMessage(tx, reader, max_size=max_size)
        chunked.announced += size
        if chunked.announced > chunked.max_size:
            await self._skip_chunk(size)
            reply = replies.message_too_big(chunked.max_size)
            await self._bdat_refused(
                replies.to_verdict(reply, reason=DataProblem.TOO_BIG.name), reply, last
            )
            return
        try:
            await self._read_bdat_chunk(chunked, size, last)
        except (_Closed, StreamClosed, ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # Where the chunk ends is unknown now: what follows must not be read as commands.
            log.exception("reading a BDAT chunk failed")
            await self._close_with(replies.LOCAL_ERROR_CLOSING)
        reader = chunked.reader
        if reader.problem is not None:
            reply = replies.data_refused(
                reader.problem,
                max_line=s.max_line_length,
                max_header=s.max_header_size,
                max_size=chunked.max_size,
            )
            verdict = replies.to_verdict(reply, reason=reader.problem.name)
            await self._bdat_refused(verdict, reply, last)
            return
        if not last:
            await self.send(chunk_accepted(size, chunked.announced))
            return
        self._chunked = None
        tx.message = Message(chunked.headers or [], reader.body)
        if chunked.header_verdict is not None and chunked.header_verdict.is_refusal:
            await self._finish(chunked.header_verdict, replies.from_verdict(chunked.header_verdict))
            return
        ending = await self._flow.end_of_data()
        if ending.delivered:
            self._errors = self._junk = 0
        await self._answer_end(ending.verdict, ending.reply)

    async def _read_bdat_chunk(self, chunked: ChunkedMessage, size: int, last: bool) -> None:
        """Read `size` bytes into the message; run `on_headers` once the header block is in."""
        assert self._flow is not None
        reader = chunked.reader
        started, received = asyncio.get_running_loop().time(), 0
        while received < size:
            piece = await self._read_chunk(started, received, size - received)
            received += len(piece)
            reader.feed_raw(piece)
            await self._bdat_headers(chunked)
        if last:
            reader.end_raw()
            await self._bdat_headers(chunked)

    async def _bdat_headers(self, chunked: ChunkedMessage) -> None:
        reader = chunked.reader
        if chunked.headers is None and reader.headers_complete and reader.problem is None:
            assert self._flow is not None
            chunked.headers = reader.headers
            chunked.header_verdict = await self._flow.headers(chunked.headers)

    async def _skip_chunk(self, size: int) -> None:
        """Read and drop `size` bytes: the data of a BDAT that is refused."""
        started, received = asyncio.get_running_loop().time(), 0
        while received < size:
            received += len(await self._read_chunk(started, received, size - received))

    async def _bdat_refused(self, verdict: Verdict, reply: Reply, last: bool) -> None:
        """End the BDAT transaction with `verdict`; chunks already on their way get `reply`."""
        if self._chunked is not None:
            self._chunked.close()
            self._chunked = None
        self._bdat_failed = None if last else reply
        await self._finish(verdict, reply)

    async def _finish(self, verdict: Verdict, answer: Reply) -> None:
        """End the transaction with `verdict` and answer the client."""
        assert self._flow is not None
        await self._flow.finish(verdict, answer)
        await self._answer_end(verdict, answer)

    async def _answer_end(self, verdict: Verdict, answer: Reply) -> None:
        if verdict.kind is VerdictKind.DISCONNECT:
            await self._close_with(answer)
        await self.send(answer)

    async def _unknown(self, line: bytes) -> None:
        """A command mailgate does not know: `on_unknown` may refuse it with its own reply."""
        flow = self._flow
        if flow is not None and flow.pipeline.implements("on_unknown"):
            command = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            verdict = await flow.unknown(command)
            if verdict is not None:
                await self._refuse(verdict)
                return
        await self.send(replies.UNKNOWN_COMMAND)

    async def _refuse(self, verdict: Verdict) -> None:
        """Answer a refused command; a disconnect verdict also ends the transaction and closes."""
        if verdict.kind is VerdictKind.DISCONNECT:
            assert self._flow is not None
            if self._flow.tx is not None:
                await self._flow.finish(verdict, replies.from_verdict(verdict))
            await self._close_with(replies.from_verdict(verdict))
        await self.send(replies.from_verdict(verdict))


def _auth_line(line: bytes) -> bool:
    """AUTH command lines may be longer than other commands (RFC 4954 section 4)."""
    return len(line) <= MAX_RESPONSE_LENGTH and line[:5].upper() == b"AUTH "


def _dsn_rcpt_problem(params: dict[str, str | None]) -> Reply | None:
    """RCPT TO takes only the DSN parameters NOTIFY and ORCPT (RFC 3461), well formed."""
    notify = params.pop("NOTIFY", "FAILURE")
    orcpt = params.pop("ORCPT", "rfc822;x")
    if params:
        return replies.UNKNOWN_PARAMETER
    if notify is None or orcpt is None or not valid_orcpt(orcpt):
        return replies.SYNTAX
    words = notify.upper().split(",")
    if len(set(words)) != len(words):
        return replies.SYNTAX
    ok = set(words) == {"NEVER"} or set(words) <= {"SUCCESS", "FAILURE", "DELAY"}
    return None if ok else replies.SYNTAX
