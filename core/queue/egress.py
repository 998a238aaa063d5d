"""`QueueEgress`: store and forward. The client gets 250 once the message is durably stored.

MAIL and RCPT are answered at once (nothing is downstream yet). At the end of data the message
is stored as it will be sent (the header block as the plugins left it, then the body) with the
final envelope (the plugins' sender and recipient changes applied), so delivery never runs the
plugins again. The 250 comes only after the transaction that stored it committed; if the store
cannot write, the client gets 451 and keeps the message.
"""

from __future__ import annotations

from collections.abc import Callable

from mailgate.egress import Reply
from mailgate.logging import get_logger
from mailgate.queue.records import NewMessage
from mailgate.session import Address, Session, Transaction
from mailgate.store import GroupCommit

log = get_logger("mailgate.queue")

ACCEPTED_MAIL = Reply(250, "2.1.0", "Ok")
ACCEPTED_RCPT = Reply(250, "2.1.5", "Ok")
NO_RECIPIENTS = Reply(250, "2.0.0", "Ok: discarded, no recipients left")


def unavailable(failure: str) -> Reply:
    """The store could not take the message: the client keeps it and tries again."""
    return Reply(451, "4.3.0", "Queue unavailable, try again later", failure=failure)


class QueueEgress:
    """The queue's way in from the flow (`mailgate.egress.Egress`).

    A quarantined message is not its business: the flow stores it in the quarantine and never
    hands it over.
    """

    holds_quarantined = False

    def __init__(
        self, writer: GroupCommit, node: str, *, name: str, queued: Callable[[], None]
    ) -> None:
        self.writer = writer
        self.node = node
        self.name = name
        self._queued = queued
        """Called after each message is stored (wakes this node's delivery worker)."""

    async def begin(
        self, session: Session, transaction: Transaction
    ) -> tuple[Reply, QueueTransaction]:
        """MAIL FROM: accepted at once; the checks are the plugins'."""
        return ACCEPTED_MAIL, QueueTransaction(self)

    async def end_session(self, session: Session) -> None:
        """Nothing is kept per session."""

    async def close(self) -> None:
        """Nothing to close here: `mailgate.queue.Queue.stop` closes the store."""


class QueueTransaction:
    """One message on its way into the queue (`mailgate.egress.DownstreamTransaction`)."""

    __slots__ = ("_egress",)

    def __init__(self, egress: QueueEgress) -> None:
        self._egress = egress

    async def rcpt(self, recipient: Address) -> Reply:
        """RCPT TO: accepted (a plugin refuses recipients that should be refused)."""
        return ACCEPTED_RCPT

    async def deliver(self, session: Session, transaction: Transaction) -> Reply:
        """Store the message with its final envelope; 250 only once that is committed."""
        message = transaction.message
        if message is None:
            return Reply(451, "4.3.0", "internal error: no message to queue")
        if not transaction.recipients:
            return NO_RECIPIENTS
        head = message.header_bytes()
        # At most the listener's max_message_size: the store takes the content in one piece.
        content = head + b"".join(message.iter_body())
        new = NewMessage.build(transaction, content, len(head), self._egress.node)
        try:
            await self._egress.writer.insert(new.rows(), size=len(content))
        except Exception as exc:
            return unavailable(f"{type(exc).__name__}: {_first_line(exc)}")
        queue_id = transaction.queue_id = new.id
        log.info("message queued", queue_id=queue_id, rcpts=len(new.recipients), size=len(content))
        self._egress._queued()
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    async def abort(self) -> None:
        """Nothing was stored before the end of data."""


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:200]
