"""The seam between an ingress and the way out (relay now, queue later).

The SMTP listener opens a downstream transaction at MAIL FROM, so a downstream refusal reaches
the client at the command it belongs to, and hands over the message at the end of data. It never
answers 250 for a message before `DownstreamTransaction.deliver` returned a 2xx reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailgate.session import Address, Session, Transaction
from mailgate.verdict import format_reply


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status (may be empty) and text (lines joined by newline)."""

    code: int
    status: str = ""
    text: str = ""

    @property
    def ok(self) -> bool:
        """True for a 2xx (or 3xx intermediate) reply."""
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        """True for a 4xx reply."""
        return 400 <= self.code < 500

    def smtp_reply(self) -> str:
        """The reply as sent: multi-line replies use ``-`` continuation, lines joined by CRLF."""
        return format_reply(self.code, self.status, self.text)


class DownstreamTransaction(Protocol):
    """One message on its way out, opened at MAIL FROM."""

    async def rcpt(self, recipient: Address) -> Reply:
        """Offer one recipient downstream; the reply goes to the client as is."""
        ...

    async def deliver(self, session: Session, transaction: Transaction) -> Reply:
        """Send the message with the final envelope (after plugins' recipient and sender changes).

        If the envelope changed so that the downstream must be asked again and it refuses any
        part of it, the result is a 4xx: never a silent partial delivery.
        """
        ...

    async def abort(self) -> None:
        """The client gave up (RSET, QUIT, error): drop the downstream transaction."""
        ...


class Egress(Protocol):
    """Where accepted messages go."""

    async def begin(
        self, session: Session, transaction: Transaction
    ) -> tuple[Reply, DownstreamTransaction | None]:
        """Start a transaction downstream with MAIL FROM; None if the downstream refused it."""
        ...

    async def end_session(self, session: Session) -> None:
        """The client session is over: release what the egress kept for it."""
        ...

    async def close(self) -> None:
        """Close pooled connections (at shutdown)."""
        ...
