"""`DeliveryWorker`: takes due messages from the queue with a lease and sends them on.

One worker per node. It claims due messages (`records.claim`: a lease of ``lease_time``
seconds in this node's name), delivers each to the next hop over the relay's own client
(`mailgate.relay.connection.DownstreamConnection`: BDAT when offered, else DATA with dot
stuffing; pooled connections), and records per recipient what the next hop said:

- 2xx: delivered; a message whose recipients are all delivered is deleted;
- 4xx, or the next hop unreachable or lost: deferred, tried again after a back-off that
  doubles from ``min_backoff`` to ``max_backoff``;
- 5xx: bounced (recorded; the DSN to the sender is a later step).

A node that dies keeps its leases until they expire; then any node takes the messages over
and sends them again: at least once, never zero. At shutdown the worker lets deliveries in
flight finish for ``shutdown_timeout`` seconds, stops the rest and releases its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from io import BytesIO

import structlog

from mailgate.egress import Reply
from mailgate.message import Message, parse_header_block
from mailgate.queue import records
from mailgate.queue.records import Outcome, Queued, QueuedRecipient
from mailgate.queue.settings import QueueSettings
from mailgate.relay import reply as replies
from mailgate.relay.connection import DownstreamConnection, DownstreamError
from mailgate.relay.params import mail_params, rcpt_params, with_size
from mailgate.relay.pool import ConnectionPool
from mailgate.relay.settings import RelaySettings
from mailgate.session import Address
from mailgate.store import GroupCommit, Store
from mailgate.store.schema import BOUNCED, DEFERRED, DELIVERED

log = structlog.get_logger("mailgate.queue")


def next_hop_settings(settings: QueueSettings, relay: RelaySettings) -> RelaySettings:
    """How the worker talks to the next hop: ``[relay]``'s settings, ``next_hop`` as address.

    The queue has no client session to present, so no XCLIENT or XFORWARD.
    """
    return dataclasses.replace(
        relay, address=settings.next_hop or relay.address, xclient=False, xforward=False
    )


class DeliveryWorker:
    """Delivers this node's share of the queue (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        writer: GroupCommit,
        settings: QueueSettings,
        relay: RelaySettings,
        node: str,
    ) -> None:
        self.store = store
        self.writer = writer
        self.settings = settings
        self.node = node
        self.next_hop = next_hop_settings(settings, relay)
        self.pool = ConnectionPool(self.next_hop)
        self.attempts = 0
        """Delivery attempts made (one per claimed message)."""
        self.on_delivery: Callable[[str, str], None] | None = None
        """Told (next hop, state) for each recipient's attempt: the queue's metrics."""
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Take back the leases a previous run of this node left, then start claiming."""
        released = await self.writer.write(
            functools.partial(records.release_leases, node=self.node)
        )
        if released:
            log.info("leases of a previous run released", node=self.node, messages=released)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="queue delivery")
        log.info("delivery started", node=self.node, next_hop=self.next_hop.address)

    def wake(self) -> None:
        """Something may be due (a message was just stored): look now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; let deliveries finish within ``shutdown_timeout``; release leases."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=self.settings.shutdown_timeout)
        unfinished = set(self._deliveries)
        for delivery in unfinished:
            delivery.cancel()
        for delivery in unfinished:
            with contextlib.suppress(asyncio.CancelledError):
                await delivery
        try:
            await self.writer.write(functools.partial(records.release_leases, node=self.node))
        except Exception as exc:
            log.warning("leases not released; they expire", error=_describe(exc))
        self.pool.close()
        log.info("delivery stopped", node=self.node, interrupted=len(unfinished))

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                more = await self._claim_and_start()
            except Exception:
                # A bug must not stop delivery for good: log it and look again later.
                log.exception("delivery loop failed")
                more = False
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval):
                    await self._wake.wait()

    async def _claim_and_start(self) -> bool:
        """Claim what this node has room for and start delivering it; True if more may be
        due at once (every free slot was filled)."""
        free = self.settings.concurrency - len(self._deliveries)
        if free <= 0:
            return False
        claimed = await self._claim(free)
        for queued in claimed:
            delivery = asyncio.create_task(self._deliver(queued), name=f"deliver {queued.id}")
            self._deliveries.add(delivery)
            delivery.add_done_callback(self._done)
        return len(claimed) == free

    def _done(self, delivery: asyncio.Task[None]) -> None:
        self._deliveries.discard(delivery)
        self._wake.set()

    async def _claim(self, limit: int) -> list[Queued]:
        claim = functools.partial(
            records.claim, node=self.node, lease_time=self.settings.lease_time, limit=limit
        )
        try:
            return await self.writer.write(claim)
        except Exception as exc:
            log.warning("queue claim failed", error=_describe(exc))
            return []

    async def _deliver(self, queued: Queued) -> None:
        outcomes: list[Outcome] = []
        if queued.recipients:
            self.attempts += 1
            try:
                async with asyncio.timeout(self.settings.lease_time / 2):
                    outcomes = await self._attempt(queued)
            except Exception as exc:
                # Cut off (the lease must not run out under us), or a bug: a back-off.
                log.warning("delivery failed", queue_id=queued.id, error=_describe(exc))
                outcomes = self._all(queued, replies.lost(_describe(exc)))
        done = (
            bool(outcomes) and queued.rest_delivered and all(o.state == DELIVERED for o in outcomes)
        )
        await self._record(queued.id, outcomes, done)

    async def _record(self, queue_id: str, outcomes: list[Outcome], done: bool) -> None:
        write = functools.partial(
            records.record, queue_id=queue_id, node=self.node, outcomes=outcomes, done=done
        )
        try:
            left = await self.writer.write(write)
        except Exception as exc:
            log.error(
                "delivery results not recorded; the message is sent again after its lease",
                queue_id=queue_id,
                error=_describe(exc),
            )
            return
        if outcomes:
            log.info("message attempted", queue_id=queue_id, left=left)

    async def _attempt(self, queued: Queued) -> list[Outcome]:
        """One delivery attempt of the due recipients; an outcome for each."""
        due = queued.recipients
        try:
            conn, reused = await self.pool.acquire()
        except DownstreamError as exc:
            return self._all(queued, exc.reply)
        try:
            try:
                mail = await _mail(conn, queued)
            except DownstreamError:
                if not reused:
                    raise
                # The pooled connection went stale while idle: a fresh one, once.
                conn = await self.pool.open_new()
                mail = await _mail(conn, queued)
            if not mail.ok:
                await self._reset(conn)
                return self._all(queued, mail)
            accepted: list[QueuedRecipient] = []
            outcomes: list[Outcome] = []
            for r in due:
                reply = await _rcpt(conn, r.address)
                if reply.ok:
                    accepted.append(r)
                else:
                    outcomes.append(self._outcome(r, reply, queued))
            if not accepted:
                await self._reset(conn)
                return outcomes
            final = await conn.send_message(_message(queued))
        except DownstreamError as exc:
            self.pool.discard(conn)
            return self._all(queued, exc.reply)
        except BaseException:
            self.pool.discard(conn)
            raise
        if final.code // 100 == 2:
            self.pool.release(conn)
        else:
            await self._reset(conn)
        return outcomes + [self._outcome(r, final, queued) for r in accepted]

    async def _reset(self, conn: DownstreamConnection) -> None:
        if await conn.reset():
            self.pool.release(conn)
        else:
            self.pool.discard(conn)

    def _all(self, queued: Queued, reply: Reply) -> list[Outcome]:
        return [self._outcome(r, reply, queued) for r in queued.recipients]

    def _outcome(
        self, recipient: QueuedRecipient, reply: Reply, queued: Queued | None = None
    ) -> Outcome:
        attempts = recipient.attempts + 1
        text = reply.smtp_reply().replace("\r\n", " ")
        if reply.failure:
            text = f"{text} ({reply.failure})"
        if 200 <= reply.code < 300:
            state, next_attempt = DELIVERED, None
        elif 500 <= reply.code < 600:
            state, next_attempt = BOUNCED, None
        else:
            state, next_attempt = DEFERRED, time.time() + self.settings.backoff(attempts)
        if self.on_delivery is not None:
            self.on_delivery(self.next_hop.address, state)
        log.info(
            "delivery",
            queue_id=queued.id if queued is not None else None,
            rcpt=recipient.address.address,
            status=state,
            reply=text,
            attempts=attempts,
            delay=round(time.time() - queued.created, 3) if queued is not None else None,
        )
        return Outcome(recipient.position, state, attempts, next_attempt, text)


async def _mail(conn: DownstreamConnection, queued: Queued) -> Reply:
    params = mail_params(queued.sender.params, conn.extensions)
    if conn.supports("size"):
        params = with_size(params, len(queued.content))
    return await conn.command(f"MAIL FROM:<{queued.sender.address}>", *params)


async def _rcpt(conn: DownstreamConnection, recipient: Address) -> Reply:
    params = rcpt_params(recipient.params, conn.extensions)
    return await conn.command(f"RCPT TO:<{recipient.address}>", *params)


def _message(queued: Queued) -> Message:
    """The stored content as a `Message` for the relay's sender (headers re-parsed unchanged:
    a header's raw value keeps its folding, so the bytes sent are the bytes stored)."""
    head = queued.content[: queued.header_size - 2]  # without the empty line
    body = BytesIO(queued.content[queued.header_size :])
    return Message(parse_header_block(head), body)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}"
