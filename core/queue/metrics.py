"""The queue's Prometheus metrics: how much waits (read from the store), and what delivery did.

`QueueMetrics` adds its metrics to the app's `mailgate.metrics.Metrics` registry:

- the depth gauges are refreshed from the store when Prometheus scrapes (`refresh`, awaited by
  the metrics endpoint before it answers), at most once per `min_interval` seconds, with three
  aggregate queries; with several nodes on one PostgreSQL store each node reports the whole
  shared queue;
- the delivery counter is counted by this node's worker, one per recipient and attempt, by
  route and result (the worker calls `delivered`). The route's name, not the host: with MX
  routing the hosts are as many as the domains mail goes to, a label must stay bounded.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from mailgate.logging import get_logger
from mailgate.queue import admin
from mailgate.store import Store
from mailgate.store.schema import BOUNCED, DEFERRED, DELIVERED, PENDING

log = get_logger("mailgate.queue")

RESULTS = (DELIVERED, DEFERRED, BOUNCED)


class QueueMetrics:
    """The queue's metrics (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store: Store,
        *,
        min_interval: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.min_interval = min_interval
        self.timeout = timeout
        self.messages = Gauge(
            "mailgate_queue_messages",
            "Messages in the queue, by state (pending, deferred, bounced, held).",
            ["state"],
            registry=registry,
        )
        self.recipients = Gauge(
            "mailgate_queue_recipients",
            "Recipients in the queue not yet delivered, by state (pending, deferred, bounced).",
            ["state"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "mailgate_queue_messages_in_flight",
            "Messages some node is delivering now (a live lease).",
            registry=registry,
        )
        self.bytes = Gauge(
            "mailgate_queue_size_bytes", "Bytes of message content in the queue.", registry=registry
        )
        self.oldest = Gauge(
            "mailgate_queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (0 when it is empty).",
            registry=registry,
        )
        self.refreshed = Gauge(
            "mailgate_queue_refreshed_timestamp_seconds",
            "When the queue gauges were last read from the store (Unix time).",
            registry=registry,
        )
        self.deliveries = Counter(
            "mailgate_queue_deliveries",
            "Delivery attempts per recipient, by route and result (delivered, deferred, bounced).",
            ["route", "result"],
            registry=registry,
        )
        self._deliveries: dict[tuple[str, str], Counter] = {}
        self._last = 0.0
        self._lock = asyncio.Lock()

    def delivered(self, route: str, result: str) -> None:
        """Count one recipient's attempt on `route` (its name) with `result`."""
        key = (route, result)
        counter = self._deliveries.get(key)
        if counter is None:
            counter = self._deliveries[key] = self.deliveries.labels(*key)
        counter.inc()

    async def refresh(self) -> None:
        """Read the depth from the store unless it was read less than `min_interval` ago. A
        store that fails or is slow leaves the previous values (and logs a warning)."""
        async with self._lock:
            if time.monotonic() - self._last < self.min_interval:
                return
            self._last = time.monotonic()
            now = time.time()
            try:
                async with asyncio.timeout(self.timeout):
                    async with self.store.engine.connect() as conn:
                        depth = await admin.depth(conn, now)
            except Exception as exc:
                log.warning("queue metrics not refreshed", error=f"{type(exc).__name__}: {exc}")
                return
        for state, count in depth.messages.items():
            self.messages.labels(state).set(count)
        for state in (PENDING, DEFERRED, BOUNCED):
            self.recipients.labels(state).set(depth.recipients.get(state, 0))
        self.in_flight.set(depth.in_flight)
        self.bytes.set(depth.size)
        self.oldest.set(max(0.0, now - depth.oldest) if depth.oldest is not None else 0.0)
        self.refreshed.set(now)
