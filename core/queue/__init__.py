"""The queue: store and forward (``egress = "queue"``).

`Queue` is one node's queue: the store (`mailgate.store`), its group commit, the egress that
accepts messages into it (`QueueEgress`) and the worker that delivers them
(`DeliveryWorker`, along the routes of `mailgate.queue.routes`). ``[queue]`` is
`QueueSettings`; ``[store]`` is `mailgate.store.StoreSettings`.
"""

from __future__ import annotations

import socket

from mailgate.dns import DnsSettings
from mailgate.logging import get_logger
from mailgate.queue.delivery import DeliveryWorker
from mailgate.queue.egress import QueueEgress
from mailgate.queue.settings import QueueSettings
from mailgate.relay.settings import RelaySettings
from mailgate.store import GroupCommit, Store, StoreSettings

log = get_logger("mailgate.queue")

__all__ = ["DeliveryWorker", "Queue", "QueueEgress", "QueueSettings"]


class Queue:
    """One node's queue: `start` opens (and migrates) the store and starts delivering; `stop`
    finishes what is in flight within ``shutdown_timeout``, releases the leases and closes."""

    def __init__(
        self,
        store: StoreSettings,
        settings: QueueSettings,
        relay: RelaySettings,
        dns: DnsSettings | None = None,
    ) -> None:
        self.settings = settings
        self.node = settings.node_id or socket.gethostname()
        self.store = Store(store)
        self.writer = GroupCommit(self.store, max_batch=settings.max_batch)
        self.worker = DeliveryWorker(self.store, self.writer, settings, relay, self.node, dns)
        self.egress = QueueEgress(
            self.writer, self.node, name=f"queue {store.redacted()}", queued=self.worker.wake
        )
        self._delivering = True

    async def start(self, *, deliver: bool = True) -> None:
        """Open the store (applying migrations), start the writer and the delivery worker.

        `deliver` False: only accept into the queue; another process of this node delivers
        (a worker other than the first, see docs/scaling.md).
        """
        await self.store.open()
        self.writer.start()
        self._delivering = deliver
        if not deliver:
            return
        try:
            await self.worker.start()
        except BaseException:
            await self.writer.stop()
            await self.store.close()
            raise

    async def stop(self) -> None:
        """Stop delivering (bounded), commit what is waiting, close the store."""
        if self._delivering:
            await self.worker.stop()
        await self.writer.stop()
        await self.store.close()
