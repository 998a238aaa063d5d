"""`StoredQuarantine`: held messages as rows of the shared store (``[quarantine] backend =
"store"``, the default).

A held message is one row: the message as the plugins left it (stored once, like the queue's),
its envelope, the session it came from, the plugin and reason that held it, every plugin's
result, and, once released, when, by whom and what the way out said. The row is committed
before the client gets ``250 ... held as ID``; if the store cannot take it, the client gets a
4xx and keeps the message. The store is opened the first time something is held (or listed),
so a node that never holds a message never touches it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.quarantine.settings import QuarantineSettings
from mailgate.queue.records import new_queue_id
from mailgate.session import Session, Transaction
from mailgate.store import Store, StoreSettings
from mailgate.store.schema import quarantine

MAX_SUBJECT = 200


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message just held in the store."""

    id: str


class StoredQuarantine:
    """The quarantine in the store. `store` may be shared with the queue (same database)."""

    def __init__(
        self,
        store_settings: StoreSettings,
        settings: QuarantineSettings,
        node: str,
        *,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.database = store or Store(store_settings)
        self._owned = store is None
        self._opening = asyncio.Lock()

    async def open(self) -> Store:
        """The store, opened (and migrated) on first use."""
        async with self._opening:
            await self.database.open()
        return self.database

    async def store_message(
        self, session: Session, transaction: Transaction, reason: str, plugin: str = ""
    ) -> StoredMessage:
        """Hold `transaction`'s message; committed before this returns."""
        message = transaction.message
        if message is None:
            raise ValueError("quarantine needs the message (end of data)")
        head = message.header_bytes()
        content = head + b"".join(message.iter_body())
        row = {
            "id": new_queue_id(),
            "created": time.time(),
            "node": self.node,
            "session": session.id,
            "transaction": transaction.id,
            "ingress": session.ingress,
            "listener": session.listener,
            "client_ip": session.client_ip,
            "client_name": session.client_name,
            "helo": session.helo,
            "auth_login": session.auth_login,
            "sender": transaction.sender.address,
            "sender_params": json.dumps(transaction.sender.params),
            "recipients": json.dumps(
                [{"address": r.address, "params": r.params} for r in transaction.recipients]
            ),
            "plugin": plugin,
            "reason": reason,
            "results": json.dumps({k: v.result for k, v in transaction.results.items()}),
            "subject": (message.get("Subject") or "")[:MAX_SUBJECT],
            "size": len(content),
            "header_size": len(head),
            "content": content,
        }
        store = await self.open()

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(insert(quarantine).values(**row))

        await store.transaction(write)
        return StoredMessage(str(row["id"]))

    async def store(
        self, session: Session, transaction: Transaction, reason: str, plugin: str = ""
    ) -> StoredMessage:
        """The `mailgate.quarantine.Quarantine` interface: `store_message`."""
        return await self.store_message(session, transaction, reason, plugin)

    async def expire(self, now: float | None = None) -> int:
        """Delete the messages held longer than ``retention_days``; how many went."""
        if not self.settings.retention_days:
            return 0
        cutoff = (now or time.time()) - self.settings.retention_days * 86400
        store = await self.open()

        async def sweep(conn: AsyncConnection) -> int:
            result = await conn.execute(delete(quarantine).where(quarantine.c.created < cutoff))
            return int(result.rowcount)

        return int(await store.transaction(sweep))

    async def close(self) -> None:
        """Close the store, unless it is shared (its owner closes it)."""
        if self._owned:
            await self.database.close()
