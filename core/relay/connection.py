"""One SMTP client connection to the downstream, on aiosmtplib's protocol layer.

aiosmtplib parses replies, guards commands against injected line breaks and does STARTTLS; it
has no BDAT and sends DATA only from a message held in memory. This module adds both, streamed:
BDAT chunks of raw bytes (no dot stuffing, so signatures survive), or DATA with transparency
applied on the fly. Errors never leave as aiosmtplib exceptions: they become `DownstreamError`
carrying the reply the client should get.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator

from aiosmtplib.errors import SMTPException
from aiosmtplib.esmtp import parse_esmtp_extensions
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

from mailgate.egress import Reply
from mailgate.message import Message
from mailgate.relay import reply as replies
from mailgate.relay.dotstuff import DotStuffer
from mailgate.relay.params import mail_params, rcpt_params, with_size
from mailgate.relay.settings import RelaySettings
from mailgate.session import Address
from mailgate.sockaddr import parse_host_port

_FAILURES = (SMTPException, OSError, ValueError)
"""What talking to the downstream may raise: protocol errors and timeouts (aiosmtplib's are
OSError and TimeoutError subclasses), socket errors, and control characters in an argument."""


class DownstreamError(Exception):
    """The downstream is unusable; `reply` is what the client gets (always 4xx)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.status} {reply.text}")
        self.reply = reply


class TlsError(DownstreamError):
    """STARTTLS was required and not offered, or the TLS handshake (or the verification of
    the downstream's certificate) failed: nothing was sent."""


class DownstreamConnection:
    """An open, greeted SMTP connection with the downstream's EHLO extensions."""

    __slots__ = (
        "_protocol",
        "_settings",
        "extensions",
        "idle_since",
        "idle_timer",
        "messages",
        "owner",
        "remote",
    )

    def __init__(
        self, protocol: SMTPProtocol, extensions: dict[str, str], settings: RelaySettings
    ) -> None:
        self._protocol = protocol
        self._settings = settings
        self.extensions = extensions
        """EHLO keywords (lower case) mapped to their parameters."""
        self.messages = 0
        """Transactions completed on this connection."""
        self.idle_since = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.owner = ""
        """The client (`client_identity`) this connection was handed to with XCLIENT; empty
        while it is mailgate's own and may serve any client."""
        self.remote = settings.address.default
        """The host that answered, for logs and records (the queue names the MX host too)."""

    @classmethod
    async def open(
        cls,
        settings: RelaySettings,
        helo_name: str,
        tls: ssl.SSLContext | None,
        server_name: str = "",
        address: str = "",
    ) -> DownstreamConnection:
        """Connect, read the greeting, EHLO (HELO as fallback) and STARTTLS when configured.

        `address` (``host:port``) is where to connect; empty: ``settings.address``'s ``else``
        value. `server_name` is the name the certificate is checked against (and sent as SNI);
        empty: the host connected to.
        """
        host, port = (
            parse_host_port(address, key="address") if address else (settings.host, settings.port)
        )
        try:
            async with asyncio.timeout(settings.connect_timeout):
                return await cls._open(
                    settings, helo_name, tls, server_name or host, (host, port, address)
                )
        except DownstreamError:
            raise
        except (*_FAILURES, TimeoutError) as exc:
            raise DownstreamError(replies.unreachable(_describe(exc))) from exc

    @classmethod
    async def _open(
        cls,
        settings: RelaySettings,
        helo_name: str,
        tls: ssl.SSLContext | None,
        server_name: str,
        where: tuple[str, int, str],
    ) -> DownstreamConnection:
        host, port, address = where
        loop = asyncio.get_running_loop()
        protocol = SMTPProtocol(loop=loop)
        await loop.create_connection(lambda: protocol, host, port)
        conn = cls(protocol, {}, settings)
        if address:
            conn.remote = address
        try:
            greeting = await protocol.read_response()
            if greeting.code != 220:
                raise DownstreamError(replies.unreachable(f"greeting {greeting.code}"))
            await conn._hello(helo_name)
            if tls is not None and "starttls" in conn.extensions:
                try:
                    await protocol.start_tls(tls, server_hostname=server_name)
                except _FAILURES as exc:
                    failed = replies.unreachable(f"STARTTLS failed: {_describe(exc)}")
                    raise TlsError(failed) from exc
                await conn._hello(helo_name)
            elif settings.starttls == "require":
                raise TlsError(replies.unreachable("STARTTLS required, not offered"))
        except BaseException:
            conn.close()
            raise
        return conn

    async def _hello(self, name: str) -> None:
        response = await self._protocol.execute_command(b"EHLO", name.encode())
        if response.code == 250:
            self.extensions = parse_esmtp_extensions(response.message)[0]
            return
        response = await self._protocol.execute_command(b"HELO", name.encode())
        if response.code != 250:
            raise DownstreamError(replies.unreachable(f"HELO refused with {response.code}"))
        self.extensions = {}

    async def xclient(self, command: str, helo_name: str, owner: str) -> None:
        """Send `command` (XCLIENT ...), read the new greeting and EHLO as the client did.

        Raises `DownstreamError` when the downstream refuses it: relaying as mailgate instead
        would skip the restrictions the site asked the downstream to apply to the real client.
        """
        reply = await self.command(command)
        # Postfix answers with a new greeting (220); smtp-sink and older servers with 250.
        if reply.code not in (220, 250):
            self.close()
            raise DownstreamError(replies.unreachable(f"XCLIENT refused: {reply.smtp_reply()}"))
        try:
            await self._hello(helo_name)
        except DownstreamError:
            self.close()
            raise
        except _FAILURES as exc:
            self.close()
            raise DownstreamError(replies.lost(_describe(exc))) from exc
        self.owner = owner

    @property
    def alive(self) -> bool:
        """False once the downstream closed the connection or we did."""
        return self._protocol.is_connected

    def supports(self, extension: str) -> bool:
        """True if EHLO advertised `extension` (lower case)."""
        return extension in self.extensions

    async def mail_from(self, sender: Address, size: int | None = None) -> Reply:
        """MAIL FROM with the parameters this server advertises (`mailgate.relay.params`);
        with `size`, ``SIZE=`` set to it when SIZE is offered."""
        params = mail_params(sender.params, self.extensions)
        if size is not None and self.supports("size"):
            params = with_size(params, size)
        return await self.command(f"MAIL FROM:<{sender.address}>", *params)

    async def rcpt_to(self, recipient: Address) -> Reply:
        """RCPT TO with the parameters this server advertises (NOTIFY and ORCPT with DSN)."""
        params = rcpt_params(recipient.params, self.extensions)
        return await self.command(f"RCPT TO:<{recipient.address}>", *params)

    async def command(self, *args: str) -> Reply:
        """Send one command and return the downstream's reply.

        Raises `DownstreamError` if the connection is lost, times out or answers 421.
        """
        encoded = [a.encode("utf-8", "surrogateescape") for a in args]
        try:
            response = await self._protocol.execute_command(
                *encoded, timeout=self._settings.command_timeout
            )
        except _FAILURES as exc:
            self.close()
            raise DownstreamError(replies.lost(_describe(exc))) from exc
        if response.code == 421:
            self.close()
            raise DownstreamError(replies.lost(f"421 {response.message}"))
        return replies.reply_from_response(response)

    async def send_message(self, message: Message) -> Reply:
        """Send the message after a successful envelope: BDAT when offered, else DATA."""
        chunks = message_chunks(message, self._settings.chunk_size)
        try:
            if self._settings.use_bdat and self.supports("chunking"):
                return await self._bdat(chunks)
            return await self._data(chunks)
        except DownstreamError:
            self.close()
            raise
        except (*_FAILURES, TimeoutError) as exc:
            self.close()
            raise DownstreamError(replies.lost(_describe(exc))) from exc

    async def _bdat(self, chunks: Iterator[bytes]) -> Reply:
        protocol = self._protocol
        current = next(chunks, b"")
        while True:
            following = next(chunks, None)
            if following is None:
                verb, timeout = b"BDAT %d LAST\r\n", self._settings.data_timeout
            else:
                verb, timeout = b"BDAT %d\r\n", self._settings.command_timeout
            protocol.write(verb % len(current) + current)
            response = await protocol.read_response(timeout=timeout)
            if following is None or response.code != 250:
                return self._final(response)
            current = following

    async def _data(self, chunks: Iterator[bytes]) -> Reply:
        protocol = self._protocol
        protocol.write(b"DATA\r\n")
        response = await protocol.read_response(timeout=self._settings.command_timeout)
        if response.code != 354:
            return self._final(response)
        stuffer = DotStuffer()
        held = b""
        for chunk in chunks:
            if held:
                protocol.write(held)
                async with asyncio.timeout(self._settings.data_timeout):
                    await protocol._drain_helper()
            held = stuffer.feed(chunk)
        # The last chunk goes out with the end marker: a small message is one write, one segment.
        protocol.write(held + stuffer.end())
        return self._final(await protocol.read_response(timeout=self._settings.data_timeout))

    def _final(self, response: SMTPResponse) -> Reply:
        if response.code == 421:
            raise DownstreamError(replies.lost(f"421 {response.message}"))
        return replies.reply_from_response(response)

    async def reset(self) -> bool:
        """RSET; True if the connection is clean and may be reused."""
        if not self.alive:
            return False
        try:
            return (await self.command("RSET")).code == 250
        except DownstreamError:
            return False

    def quit(self) -> None:
        """Say QUIT without waiting for the answer, and close (idle expiry, shutdown)."""
        if self.alive:
            with contextlib.suppress(*_FAILURES):
                self._protocol.write(b"QUIT\r\n")
        self.close()

    def close(self) -> None:
        """Drop the connection at once."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()


def message_chunks(message: Message, size: int) -> Iterator[bytes]:
    """The message as sent (headers as changed by plugins, then the spooled body) in chunks.

    The first chunk holds the header block and the start of the body, so a small message is
    one chunk. The body's file position is set before every read: other readers may move it
    while the relay waits on the network.
    """
    head = message.header_bytes()
    first = message.open_body().read(max(size - len(head), 0))
    yield head + first
    yield from message.iter_body(size, start=len(first))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
