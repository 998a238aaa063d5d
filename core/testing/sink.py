"""`Sink`: an SMTP server on loopback that accepts everything and keeps it, for tests.

It runs its own event loop in a thread, so it serves a ``mailgate serve`` process, a
``mailgate`` running in the test's own loop, or ``smtplib`` alike. It speaks what a relay
needs (EHLO with 8BITMIME, SMTPUTF8 and PIPELINING, MAIL, RCPT, DATA, RSET, NOOP, QUIT), takes
at most `max_message_size` bytes per message, and can be told to refuse: `refuse_recipients`
(a set of addresses answered ``550 5.1.1``) for per-recipient tests.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

_PATH = re.compile(rb"^(?:MAIL FROM|RCPT TO):\s*<([^>]*)>", re.I)


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """One message the sink accepted: its envelope and its bytes (dot-stuffing undone)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    helo: str = ""

    @property
    def email(self) -> EmailMessage:
        """The message parsed by the standard library, for ``msg["Subject"]`` and friends."""
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def header(self, name: str) -> str | None:
        """The first `name` header, unfolded, or None."""
        value = self.email[name]
        return None if value is None else str(value)


@dataclass
class Sink:
    """An SMTP sink on ``127.0.0.1`` and a free port; `start`, then `stop` (or use it as a
    context manager; the ``mailgate_sink`` fixture does both)."""

    max_message_size: int = 50 * 1024 * 1024
    refuse_recipients: set[str] = field(default_factory=set)
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[SinkMessage] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        """``host:port``, as ``--relay`` and ``[relay] address`` take it."""
        return f"{self.host}:{self.port}"

    def start(self) -> Sink:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._session, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="mailgate test sink", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until `count` messages arrived; all of them, in arrival order."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"the sink got {len(self.messages)} message(s), not {count}")
            time.sleep(0.02)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        helo, sender = "", None
        recipients: list[str] = []
        writer.write(b"220 sink.test ESMTP mailgate test sink\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    helo = line[5:].strip().decode("utf-8", "replace")
                    sender, recipients = None, []
                    writer.write(
                        b"250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n"
                        + f"250 SIZE {self.max_message_size}\r\n".encode()
                    )
                elif verb == b"MAIL" and (m := _PATH.match(line)):
                    sender, recipients = m.group(1).decode("utf-8", "replace"), []
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT" and sender is not None and (m := _PATH.match(line)):
                    rcpt = m.group(1).decode("utf-8", "replace")
                    if rcpt.lower() in {r.lower() for r in self.refuse_recipients}:
                        writer.write(b"550 5.1.1 No such user here\r\n")
                    else:
                        recipients.append(rcpt)
                        writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA" and sender is not None and recipients:
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    data = await self._data(reader)
                    if data is None:
                        writer.write(b"552 5.3.4 Message too big\r\n")
                    else:
                        with self._lock:
                            self.messages.append(SinkMessage(sender, tuple(recipients), data, helo))
                        writer.write(b"250 2.0.0 Ok: queued\r\n")
                    sender, recipients = None, []
                elif verb == b"RSET":
                    sender, recipients = None, []
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"NOOP":
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"503 5.5.1 Bad sequence of commands\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _data(self, reader: asyncio.StreamReader) -> bytes | None:
        lines: list[bytes] = []
        size = 0
        while True:
            line = await reader.readuntil(b"\n")
            if line in (b".\r\n", b".\n"):
                break
            size += len(line)
            if size <= self.max_message_size:
                lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines) if size <= self.max_message_size else None
