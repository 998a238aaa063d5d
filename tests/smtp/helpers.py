"""A listener in its own event-loop thread, a recording egress and raw SMTP clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailgate.egress import Egress, Reply
from mailgate.pipeline import EnabledPlugin, Pipeline
from mailgate.quarantine import QuarantineStore
from mailgate.relay import RelayEgress
from mailgate.session import Session, Transaction
from mailgate.smtp.listener import SmtpListener
from mailgate.smtp.settings import SmtpListenerSettings
from tests import event_loops


@dataclass
class Delivered:
    """What a `RecordingEgress` was handed at the end of data."""

    sender: str
    recipients: list[str]
    data: bytes
    quarantined: str | None


@dataclass
class RecordingEgress:
    """An egress that keeps what it gets; for error paths a real downstream cannot produce.
    Like the MTA behind a milter, it is handed quarantined messages (marked) to hold."""

    name = "recording"
    holds_quarantined = True

    mail_reply: Reply = field(default_factory=lambda: Reply(250, "2.1.0", "OK"))
    rcpt_reply: Reply = field(default_factory=lambda: Reply(250, "2.1.5", "OK"))
    deliver_reply: Reply = field(default_factory=lambda: Reply(250, "2.0.0", "Queued as X1"))
    fail_at: str = ""
    delay: float = 0.0
    begun: int = 0
    aborted: int = 0
    rcpts: list[str] = field(default_factory=list)
    delivered: list[Delivered] = field(default_factory=list)

    async def _step(self, name: str) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_at == name:
            raise ConnectionResetError(f"downstream died at {name}")

    async def begin(self, session: Session, transaction: Transaction) -> tuple[Reply, Any]:
        self.begun += 1
        await self._step("begin")
        if not self.mail_reply.ok:
            return self.mail_reply, None
        return self.mail_reply, _RecordingTransaction(self)

    async def end_session(self, session: Session) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass
class _RecordingTransaction:
    egress: RecordingEgress

    async def rcpt(self, recipient: Any) -> Reply:
        await self.egress._step("rcpt")
        self.egress.rcpts.append(recipient.address)
        return self.egress.rcpt_reply

    async def deliver(self, session: Session, transaction: Transaction) -> Reply:
        await self.egress._step("deliver")
        assert transaction.message is not None
        data = b"".join(transaction.message.iter_bytes())
        self.egress.delivered.append(
            Delivered(
                transaction.sender.address,
                [r.address for r in transaction.recipients],
                data,
                transaction.quarantined,
            )
        )
        return self.egress.deliver_reply

    async def abort(self) -> None:
        self.egress.aborted += 1


class Gateway:
    """An `SmtpListener` on 127.0.0.1, port 0, served by an event loop in a thread, so tests
    can use blocking clients (smtplib, sockets, swaks)."""

    def __init__(self, egress: Egress, plugins: Sequence[object] = (), **settings: Any) -> None:
        settings.setdefault("address", "127.0.0.1:0")
        settings.setdefault("hostname", "mx.mailgate.test")
        self.settings = SmtpListenerSettings(**settings)
        self.egress = egress
        enabled = [
            p if isinstance(p, EnabledPlugin) else EnabledPlugin(type(p).__name__.lower(), p)
            for p in plugins
        ]
        self.pipeline = Pipeline(enabled)
        self.loop = event_loops.new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        quarantine = None
        if isinstance(egress, RelayEgress):
            quarantine = QuarantineStore(egress.settings.quarantine_dir)
        self.listener = SmtpListener(
            self.settings, pipeline=lambda: self.pipeline, egress=egress, quarantine=quarantine
        )

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Gateway:
        self.thread.start()
        self.run(self.listener.start())
        return self

    @property
    def port(self) -> int:
        return self.listener.port

    def stop(self) -> None:
        self.run(self.listener.stop())
        self.run(self.egress.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def raw_session(port: int, payload: bytes, *, ehlo: bool = True, timeout: float = 10.0) -> str:
    """Connect, read the greeting, EHLO, send `payload` in one write, and return every reply
    until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        received = _read_reply(sock)
        if ehlo:
            sock.sendall(b"EHLO client.test\r\n")
            received += _read_reply(sock)
        sock.sendall(payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            received += data
    return received.decode("utf-8", "replace")


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while True:
        data += sock.recv(65536)
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data


def codes(transcript: str) -> list[int]:
    """The reply codes of a transcript, last lines of multi-line replies only."""
    return [int(line[:3]) for line in transcript.split("\r\n") if line[3:4] == " "]


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll `predicate` until it is true (session clean-up runs after the socket closes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def untraced(data: bytes) -> bytes:
    """`data` without the ``Received:`` header mailgate put at its top (asserted present)."""
    assert data.startswith(b"Received: from "), data[:80]
    end = data.index(b"\r\n")
    while data[end + 2 : end + 3] in (b"\t", b" "):
        end = data.index(b"\r\n", end + 2)
    return data[end + 2 :]


# The end-of-data variants of the public SMTP smuggling research: none of them ends DATA.
FAKE_ENDS = [
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\0.\r\n",
    b"\r\n.\0\r\n",
]
