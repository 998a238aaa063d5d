"""The seam between the flow and the way out: the relay now, the queue next, the MTA itself.

`mailgate.flow.SessionFlow` opens a downstream transaction at MAIL FROM, so a downstream refusal
reaches the client at the command it belongs to, and hands over the message at the end of data.
It never answers 250 for a message before `DownstreamTransaction.deliver` returned a 2xx reply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mailgate.session import Address, Session, Transaction
from mailgate.verdict import format_reply


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status (may be empty) and text (lines joined by newline)."""

    code: int
    status: str = ""
    text: str = ""
    failure: str = field(default="", compare=False)
    """Set when the egress made this reply up because the downstream failed (could not be
    reached, went away, timed out): what happened, for the log, never for the client."""

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

    name: str
    """What the log calls this way out (``relay 127.0.0.1:10025``)."""

    holds_quarantined: bool
    """True when the way out keeps a quarantined message itself (the MTA's hold queue); else
    the flow stores it in mailgate's quarantine and does not hand it over."""

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


class MtaEgress:
    """The way out when the MTA keeps the message (milter and policy listeners) or nothing is
    sent at all (``mailgate try``): every step succeeds; `check` may refuse the end of data
    (the milter listener: changes the MTA did not allow)."""

    name = "mta"
    holds_quarantined = True
    answers_at_once = True
    """Every step returns without waiting for anything: the flow needs no deadline for it."""

    def __init__(self, check: Callable[[Transaction], Reply | None] | None = None) -> None:
        self._transaction = _MtaTransaction(check)

    async def begin(
        self, session: Session, transaction: Transaction
    ) -> tuple[Reply, DownstreamTransaction | None]:
        """Nothing to open: the MTA has the transaction."""
        return HANDED_BACK, self._transaction

    async def end_session(self, session: Session) -> None:
        """Nothing kept per session."""

    async def close(self) -> None:
        """Nothing to close."""


HANDED_BACK = Reply(250, "2.0.0", "Ok")
"""What `MtaEgress` answers: the MTA decides on its own from here."""


class _MtaTransaction:
    __slots__ = ("_check",)

    def __init__(self, check: Callable[[Transaction], Reply | None] | None) -> None:
        self._check = check

    async def rcpt(self, recipient: Address) -> Reply:
        return HANDED_BACK

    async def deliver(self, session: Session, transaction: Transaction) -> Reply:
        refusal = self._check(transaction) if self._check is not None else None
        return refusal or HANDED_BACK

    async def abort(self) -> None:
        return None
