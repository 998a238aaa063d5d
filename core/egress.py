"""The seam between an ingress and the way out (relay now, queue later).

The SMTP listener opens a downstream transaction at MAIL FROM, so a downstream refusal reaches
the client at the command it belongs to, and hands over the message at the end of data. It never
answers 250 for a message before `DownstreamTransaction.deliver` returned a 2xx reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailgate.session import Address, Session, Transaction


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
        """As aiosmtpd's handler return value: multi-line replies use ``-`` continuation."""
        lines = self.text.split("\n") if self.text else [""]
        prefix = f"{self.status} " if self.status else ""
        out = [f"{self.code}-{prefix}{line}" for line in lines[:-1]]
        out.append(f"{self.code} {prefix}{lines[-1]}".rstrip())
        return "\r\n".join(out)


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

    async def close(self) -> None:
        """Close pooled connections (at shutdown)."""
        ...
