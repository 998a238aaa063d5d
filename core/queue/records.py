"""The queue's records in the store: storing a message, claiming due ones with a lease,
loading one for delivery, and recording what the next hop said.

Every write runs inside a `mailgate.store.GroupCommit` transaction (the functions take its
connection); reads use a connection of their own.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import String, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.session import Address, Transaction
from mailgate.store import Rows
from mailgate.store.schema import (
    BOUNCED,
    DELIVERED,
    PENDING,
    UNDELIVERED,
    messages,
    recipients,
)

FINAL = (DELIVERED, BOUNCED)
"""A recipient's states that are never tried again."""


def new_queue_id() -> str:
    """A queue id unique across nodes, sorting roughly by time: ``18C3F2A9B10E5D2A7C4F1``."""
    return f"{time.time_ns() // 1_000_000:011X}{secrets.token_hex(5).upper()}"


def _param(params: Sequence[str], name: str) -> str | None:
    for param in params:
        key, _, value = param.partition("=")
        if key.upper() == name:
            return value
    return None


@dataclass(slots=True)
class NewMessage:
    """A message about to be stored: its rows, built before the shared transaction."""

    id: str
    message: dict[str, object]
    recipients: list[dict[str, object]]

    @classmethod
    def build(
        cls, transaction: Transaction, content: bytes, header_size: int, node: str
    ) -> NewMessage:
        """The rows for `transaction` with the message as sent (`content`), due at once."""
        return cls.create(
            transaction.sender,
            transaction.recipients,
            content,
            header_size,
            node,
            transaction=transaction.id,
        )

    @classmethod
    def create(
        cls,
        sender: Address,
        rcpts: Sequence[Address],
        content: bytes,
        header_size: int,
        node: str,
        *,
        transaction: str,
        queue_id: str | None = None,
    ) -> NewMessage:
        """The rows for a message from `sender` to `rcpts` (`content` as it is sent), due at
        once; `transaction` is the id the log knows it by."""
        now = time.time()
        queue_id = queue_id or new_queue_id()
        row: dict[str, object] = {
            "id": queue_id,
            "created": now,
            "node": node,
            "transaction": transaction,
            "sender": sender.address,
            "sender_params": json.dumps(sender.params),
            "envid": _param(sender.params, "ENVID"),
            "ret": _param(sender.params, "RET"),
            "size": len(content),
            "next_attempt": now,
            "lease_owner": None,
            "lease_until": None,
            "header_size": header_size,
            "content": content,
        }
        rows: list[dict[str, object]] = [
            {
                "message_id": queue_id,
                "position": i,
                "address": r.address,
                "params": json.dumps(r.params),
                "notify": _param(r.params, "NOTIFY"),
                "orcpt": _param(r.params, "ORCPT"),
                "state": PENDING,
                "attempts": 0,
                "next_attempt": now,
                "last_reply": "",
                "updated": now,
            }
            for i, r in enumerate(rcpts)
        ]
        return cls(queue_id, row, rows)

    def rows(self) -> Rows:
        """The rows to insert (`GroupCommit.insert` merges them with the batch's others)."""
        return Rows(((messages, [self.message]), (recipients, self.recipients)))


async def claim(conn: AsyncConnection, node: str, lease_time: float, limit: int) -> list[Queued]:
    """Lease up to `limit` due messages to `node` and load them, soonest due first.

    Due: a recipient's retry time has come, and no lease is held or the holder's has expired
    (that node died or hung). On PostgreSQL the rows are picked with ``FOR UPDATE SKIP
    LOCKED``, so nodes claiming at once take different messages without waiting on each other;
    SQLite has a single writer at a time. The leased rows come back with their content
    (``RETURNING``), and the recipients of all of them in one more query: two statements for
    the whole batch.
    """
    now = time.time()
    due = (
        select(messages.c.id)
        .where(
            messages.c.next_attempt <= now,
            or_(messages.c.lease_until.is_(None), messages.c.lease_until < now),
        )
        .order_by(messages.c.next_attempt)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    leased = (
        await conn.execute(
            update(messages)
            .where(messages.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=node, lease_until=now + lease_time)
            .returning(
                messages.c.id,
                messages.c.sender,
                messages.c.sender_params,
                messages.c.created,
                messages.c.header_size,
                messages.c.content,
            )
        )
    ).all()
    if not leased:
        return []
    found = {
        row.id: Queued(
            row.id,
            Address(row.sender, json.loads(row.sender_params)),
            row.created,
            row.header_size,
            bytes(row.content),
            [],
        )
        for row in leased
    }
    rcpts = await conn.execute(
        select(
            recipients.c.message_id,
            recipients.c.position,
            recipients.c.address,
            recipients.c.params,
            recipients.c.attempts,
            recipients.c.state,
            recipients.c.next_attempt,
            recipients.c.notified,
        )
        .where(recipients.c.message_id.in_(list(found)))
        .order_by(recipients.c.message_id, recipients.c.position)
    )
    for r in rcpts:
        queued = found[r.message_id]
        if r.state in UNDELIVERED and r.next_attempt is not None and r.next_attempt <= now:
            address = Address(r.address, json.loads(r.params))
            queued.recipients.append(QueuedRecipient(r.position, address, r.attempts, r.notified))
        elif r.state not in FINAL:
            queued.rest_final = False
    return list(found.values())


async def release_leases(conn: AsyncConnection, node: str) -> int:
    """Give up every lease `node` holds (at shutdown, and at start for a previous run)."""
    result = await conn.execute(
        update(messages)
        .where(messages.c.lease_owner == node)
        .values(lease_owner=None, lease_until=None)
    )
    return result.rowcount


@dataclass(slots=True)
class QueuedRecipient:
    """A recipient due for delivery."""

    position: int
    address: Address
    attempts: int
    notified: str | None = None
    """The last DSN queued for it (``delay``: its sender was told it is late)."""


@dataclass(slots=True)
class Queued:
    """A claimed message, loaded for delivery."""

    id: str
    sender: Address
    created: float
    header_size: int
    content: bytes
    recipients: list[QueuedRecipient]
    """The recipients due now."""
    rest_final: bool = True
    """True when every other recipient of the message is delivered or bounced already: if
    the due ones reach a final state now, the message is done."""
    next_hop_dsn: bool = False
    """Set during an attempt: the next hop offered DSN (it took ``NOTIFY``/``ORCPT``/
    ``RET``/``ENVID``, and reports successes itself)."""
    remote_mta: str = ""
    """Set during an attempt: the host that answered; "" for the configured next hop."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one recipient in one attempt."""

    position: int
    state: str
    attempts: int
    next_attempt: float | None
    reply: str
    status: str = ""
    """The enhanced status code for a DSN (``5.1.1``; ``4.4.7`` when expired)."""
    diagnostic: str = ""
    """The DSN's ``Diagnostic-Code``: ``smtp; <reply>``, or ``X-mailgate; <what failed>``."""
    remote_mta: str = ""
    """The next hop that gave the reply; "" when none answered."""
    expired: bool = False
    """Bounced because the message outlived ``max_age``."""
    notified: str | None = None
    """The DSN queued for it with this outcome (``failure``, ``delay``, ``success``)."""


async def record(
    conn: AsyncConnection,
    queue_id: str,
    node: str,
    outcomes: Sequence[Outcome],
    done: bool = False,
    reports: Sequence[NewMessage] = (),
    delay_warned: float | None = None,
) -> str:
    """Write the outcomes, queue the `reports` (DSNs to the sender, in the same transaction,
    so a crash can neither lose nor repeat one) and release the lease. A message left with no
    recipient to try again (each one delivered, or bounced and its DSN queued) is deleted, in
    one statement when the caller knows it is `done`. Returns ``done`` or ``waiting`` (a
    recipient will be tried again)."""
    now = time.time()
    if reports and await _lease_holder(conn, queue_id) == node:
        # (A node that lost its lease leaves the reports to the node that took over.)
        await conn.execute(messages.insert(), [r.message for r in reports])
        await conn.execute(recipients.insert(), [row for r in reports for row in r.recipients])
    if done:
        # The recipients go with it (ON DELETE CASCADE).
        await conn.execute(delete(messages).where(messages.c.id == queue_id))
        return "done"
    if outcomes:
        await conn.execute(
            update(recipients)
            .where(
                recipients.c.message_id == bindparam("m_id"),
                recipients.c.position == bindparam("m_position"),
            )
            .values(
                state=bindparam("m_state"),
                attempts=bindparam("m_attempts"),
                next_attempt=bindparam("m_next"),
                last_reply=bindparam("m_reply"),
                remote_mta=bindparam("m_remote"),
                notified=func.coalesce(
                    bindparam("m_notified", type_=String), recipients.c.notified
                ),
                updated=now,
            ),
            [
                {
                    "m_id": queue_id,
                    "m_position": o.position,
                    "m_state": o.state,
                    "m_attempts": o.attempts,
                    "m_next": o.next_attempt,
                    "m_reply": o.reply,
                    "m_remote": o.remote_mta or None,
                    "m_notified": o.notified,
                }
                for o in outcomes
            ],
        )
    due, waiting = (
        await conn.execute(
            select(
                func.min(recipients.c.next_attempt).filter(recipients.c.state.in_(UNDELIVERED)),
                func.count().filter(recipients.c.state.in_(UNDELIVERED)),
            ).where(recipients.c.message_id == queue_id)
        )
    ).one()
    if not waiting:
        await conn.execute(delete(messages).where(messages.c.id == queue_id))
        return "done"
    values: dict[str, object] = {"next_attempt": due, "lease_owner": None, "lease_until": None}
    if delay_warned is not None:
        values["delay_warned"] = delay_warned
    await conn.execute(
        update(messages)
        .where(messages.c.id == queue_id, messages.c.lease_owner == node)
        .values(**values)
    )
    return "waiting"


async def _lease_holder(conn: AsyncConnection, queue_id: str) -> str | None:
    return (
        await conn.execute(select(messages.c.lease_owner).where(messages.c.id == queue_id))
    ).scalar_one_or_none()
