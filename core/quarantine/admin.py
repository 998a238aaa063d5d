"""What ``mailgate quarantine`` does with the held messages in the store: find them, show
one, release, delete.

Release sends a held message on **without running the plugins again**: into the queue when
the node has one (``[queue]``; the running node's worker delivers it), else straight to the
relay's downstream (``[relay] address``) with mailgate's own SMTP client. With ``rescan`` it
is sent instead to mailgate's own SMTP listener, so the whole chain judges it again. Either
way the row records when, by whom and what the way out answered; a message is marked
released only when at least one recipient was accepted.
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from sqlalchemy import Select, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.egress import Reply
from mailgate.message import Message, parse_header_block
from mailgate.relay.connection import DownstreamError
from mailgate.relay.pool import ConnectionPool
from mailgate.relay.settings import RelaySettings
from mailgate.session import Address, Transaction
from mailgate.store import Store, like_literal
from mailgate.store.schema import quarantine


@dataclass(slots=True)
class Filters:
    """Which held messages a command is about (every given filter must match)."""

    ids: Sequence[str] = ()
    sender: str = ""
    """A substring of the sender (case-insensitive)."""
    recipient: str = ""
    """A substring of any recipient (case-insensitive)."""
    plugin: str = ""
    older_than: float | None = None
    """Seconds."""
    newer_than: float | None = None
    state: str = ""
    """``held`` (not released) or ``released``; empty: both."""

    def query(self, now: float) -> Select[Any]:
        q = select(quarantine).order_by(quarantine.c.created)
        if self.ids:
            q = q.where(quarantine.c.id.in_(list(self.ids)))
        if self.sender:
            q = q.where(_contains(quarantine.c.sender, self.sender))
        if self.recipient:
            q = q.where(
                quarantine.c.recipients.ilike(f"%{like_literal(self.recipient)}%", escape="\\")
            )
        if self.plugin:
            q = q.where(quarantine.c.plugin == self.plugin)
        if self.older_than is not None:
            q = q.where(quarantine.c.created <= now - self.older_than)
        if self.newer_than is not None:
            q = q.where(quarantine.c.created >= now - self.newer_than)
        if self.state == "held":
            q = q.where(quarantine.c.released.is_(None))
        elif self.state == "released":
            q = q.where(quarantine.c.released.is_not(None))
        return q


def _contains(column: Any, text: str) -> Any:
    """`column` contains `text`, any case, `text` matched as itself."""
    return column.ilike(f"%{like_literal(text)}%", escape="\\")


@dataclass(slots=True)
class HeldMessage:
    """One row, read back."""

    id: str
    created: float
    sender: str
    recipients: list[Address]
    plugin: str
    reason: str
    subject: str
    size: int
    client_ip: str
    client_name: str
    helo: str
    auth_login: str
    listener: str
    session: str
    transaction: str
    node: str
    sender_params: list[str]
    results: dict[str, str]
    released: float | None
    released_by: str | None
    release_result: str | None
    header_size: int
    content: bytes = field(repr=False)

    @classmethod
    def of(cls, row: Any) -> HeldMessage:
        recipients = [Address(r["address"], list(r["params"])) for r in json.loads(row.recipients)]
        return cls(
            row.id, row.created, row.sender, recipients, row.plugin, row.reason, row.subject,
            row.size, row.client_ip, row.client_name, row.helo, row.auth_login, row.listener,
            row.session, row.transaction, row.node, json.loads(row.sender_params),
            json.loads(row.results), row.released, row.released_by, row.release_result,
            row.header_size, bytes(row.content),
        )  # fmt: skip

    @property
    def state(self) -> str:
        return "released" if self.released is not None else "held"

    def message(self) -> Message:
        """The content as a `Message` (headers re-parsed unchanged; the body as stored)."""
        head = self.content[: self.header_size - 2]
        return Message(parse_header_block(head), BytesIO(self.content[self.header_size :]))

    def as_dict(self, *, content: bool = False) -> dict[str, Any]:
        """JSON-ready; the content only when asked (as text, undecodable bytes escaped)."""
        found = {
            "id": self.id,
            "state": self.state,
            "created": self.created,
            "sender": self.sender,
            "recipients": [r.address for r in self.recipients],
            "plugin": self.plugin,
            "reason": self.reason,
            "subject": self.subject,
            "size": self.size,
            "client": {"ip": self.client_ip, "name": self.client_name, "helo": self.helo},
            "auth_login": self.auth_login,
            "listener": self.listener,
            "session": self.session,
            "transaction": self.transaction,
            "node": self.node,
            "results": self.results,
            "released": self.released,
            "released_by": self.released_by,
            "release_result": self.release_result,
        }
        if content:
            found["content"] = self.content.decode("utf-8", "backslashreplace")
        return found


async def find(store: Store, filters: Filters, now: float | None = None) -> list[HeldMessage]:
    """The held messages matching `filters`, oldest first."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(filters.query(now or time.time()))).all()
    return [HeldMessage.of(row) for row in rows]


async def remove(store: Store, ids: Sequence[str]) -> int:
    """Delete these messages; how many were there."""

    async def work(conn: AsyncConnection) -> int:
        result = await conn.execute(delete(quarantine).where(quarantine.c.id.in_(list(ids))))
        return int(result.rowcount)

    return await store.transaction(work)


@dataclass(slots=True)
class Released:
    """What one release did: the reply per recipient, and whether anyone took it."""

    id: str
    replies: dict[str, str]
    way: str

    @property
    def accepted(self) -> bool:
        return any(r.startswith("2") for r in self.replies.values())

    @property
    def summary(self) -> str:
        return "; ".join(f"{rcpt}: {reply}" for rcpt, reply in self.replies.items())


async def record_release(store: Store, released: Released, by: str) -> None:
    """Write who released it and what the way out said (released only if someone took it)."""
    values: dict[str, Any] = {"release_result": f"{released.way}: {released.summary}"}
    if released.accepted:
        values.update(released=time.time(), released_by=by)

    async def work(conn: AsyncConnection) -> None:
        await conn.execute(update(quarantine).where(quarantine.c.id == released.id).values(values))

    await store.transaction(work)


async def relay_release(held: HeldMessage, relay: RelaySettings) -> Released:
    """Send `held` to the downstream with mailgate's relay client: no plugins run."""
    pool = ConnectionPool(relay)
    replies: dict[str, str] = {}
    try:
        try:
            conn, _ = await pool.acquire()
        except DownstreamError as exc:
            return Released(held.id, _all(held, exc.reply), f"relay {relay.address.default}")
        try:
            mail = await conn.mail_from(Address(held.sender, held.sender_params), held.size)
            if not mail.ok:
                return Released(held.id, _all(held, mail), f"relay {relay.address.default}")
            accepted = []
            for r in held.recipients:
                reply = await conn.rcpt_to(r)
                replies[r.address] = _text(reply)
                if reply.ok:
                    accepted.append(r.address)
            if accepted:
                final = await conn.send_message(held.message())
                for address in accepted:
                    replies[address] = _text(final)
            conn.quit()
        except DownstreamError as exc:
            for r in held.recipients:
                if r.address not in replies or replies[r.address].startswith("2"):
                    replies[r.address] = _text(exc.reply)
            conn.close()
    finally:
        pool.close()
    return Released(held.id, replies, f"relay {relay.address.default}")


async def queue_release(held: HeldMessage, writer_store: Store, node: str) -> Released:
    """Put `held` into the queue (its final envelope and content): the delivery worker of any
    node sends it on. No plugins run."""
    from mailgate.queue.records import NewMessage

    tx = Transaction(Address(held.sender, held.sender_params), list(held.recipients))
    new = NewMessage.build(tx, held.content, held.header_size, node)

    async def work(conn: AsyncConnection) -> None:
        for table, rows in new.rows().tables:
            await conn.execute(table.insert(), rows)

    await writer_store.transaction(work)
    reply = f"250 2.0.0 queued as {new.id}"
    return Released(held.id, {r.address: reply for r in held.recipients}, "queue")


def rescan_release(held: HeldMessage, listener: str) -> Released:
    """Send `held` to mailgate's own SMTP listener at `listener` (``host:port``): the chain
    judges it again, as if it had just arrived from this host."""
    host, _, port = listener.rpartition(":")
    replies: dict[str, str] = {}
    try:
        with smtplib.SMTP(host.strip("[]"), int(port), timeout=60) as client:
            refused = client.sendmail(
                held.sender,
                [r.address for r in held.recipients],
                held.content,
            )
        for r in held.recipients:
            code, text = refused.get(r.address, (250, b"accepted"))
            replies[r.address] = f"{code} {text.decode('utf-8', 'replace')}"
    except smtplib.SMTPRecipientsRefused as exc:
        for address, (code, text) in exc.recipients.items():
            replies[address] = f"{code} {text.decode('utf-8', 'replace')}"
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        said = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        replies = {r.address: f"{exc.smtp_code} {said}" for r in held.recipients}
    except OSError as exc:
        replies = {r.address: f"not sent: {exc}" for r in held.recipients}
    return Released(held.id, replies, f"rescan via {listener}")


def _all(held: HeldMessage, reply: Reply) -> dict[str, str]:
    return {r.address: _text(reply) for r in held.recipients}


def _text(reply: Reply) -> str:
    return reply.smtp_reply().replace("\r\n", " ")
