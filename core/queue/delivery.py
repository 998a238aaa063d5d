"""`DeliveryWorker`: takes due messages from the queue with a lease and sends them on.

One worker per node. It claims due messages (`records.claim`: a lease of ``lease_time``
seconds in this node's name), sends each recipient along its route (`mailgate.queue.routes`),
one transaction per destination (`mailgate.queue.destinations`: a next hop, or a domain's MX
hosts), over the relay's own client (`mailgate.relay.connection.DownstreamConnection`: BDAT
when offered, else DATA with dot stuffing; pooled connections), and records per recipient
what the host that answered said (and which host it was):

- 2xx: delivered;
- 4xx, or the next hop unreachable or lost: deferred, tried again after a back-off that
  doubles from ``min_backoff`` to ``max_backoff``; bounced (4.4.7) once the message is
  older than ``max_age``;
- 5xx: bounced.

The DSNs the outcomes call for (`mailgate.queue.notices`) are queued in the transaction
that records them; a message with no recipient left to try is deleted.

A node that dies keeps its leases until they expire; then any node takes the messages over
and sends them again: at least once, never zero. At shutdown the worker lets deliveries in
flight finish for ``shutdown_timeout`` seconds, stops the rest and releases its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import socket
import time
from collections.abc import Callable
from io import BytesIO

from mailgate.dns import DnsSettings, async_resolver
from mailgate.egress import Reply
from mailgate.logging import get_logger
from mailgate.message import Message, parse_header_block
from mailgate.queue import records
from mailgate.queue.destinations import Destination, Destinations
from mailgate.queue.dsn import ReportSettings
from mailgate.queue.mx import NoRoute
from mailgate.queue.notices import Notices, Notifier
from mailgate.queue.records import FINAL, Outcome, Queued, QueuedRecipient
from mailgate.queue.routes import Router, default_route
from mailgate.queue.schedule import Schedule
from mailgate.queue.settings import QueueSettings
from mailgate.relay import reply as replies
from mailgate.relay.connection import DownstreamConnection, DownstreamError
from mailgate.relay.pool import ConnectionPool
from mailgate.relay.settings import RelaySettings
from mailgate.store import GroupCommit, Store
from mailgate.store.schema import BOUNCED, DEFERRED, DELIVERED

log = get_logger("mailgate.queue")


def router(settings: QueueSettings, relay: RelaySettings) -> Router:
    """The routes of ``[[queue.route]]``, and ``next_hop`` (or ``[relay] address``) as the
    default, spoken to with ``[relay]``'s settings (no XCLIENT or XFORWARD: the queue has no
    client session to present)."""
    return Router(
        settings.route,
        default_route(settings.next_hop, relay),
        relay,
        settings.destination_concurrency,
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
        dns: DnsSettings | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.settings = settings
        self.node = node
        self.router = router(settings, relay)
        self.destinations = Destinations(async_resolver(dns or DnsSettings()), relay.helo_name)
        """Where mail goes, each place with its pool of connections and its limit."""
        self.attempts = 0
        """Delivery attempts made (one per claimed message)."""
        self.on_delivery: Callable[[str, str], None] | None = None
        """Told (route name, state) for each recipient's attempt: the queue's metrics."""
        self.schedule = Schedule(settings)
        self.notifier = Notifier(self.schedule, self._report_settings(), node)
        self.reports = 0
        """DSNs queued by this worker."""
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    def _report_settings(self, hostname: str = "") -> ReportSettings:
        return ReportSettings(
            hostname=self.settings.hostname or hostname or "localhost",
            default_return=self.settings.dsn_return,
            max_return=self.settings.dsn_max_return,
        )

    async def start(self) -> None:
        """Take back the leases a previous run of this node left, then start claiming."""
        if not self.settings.hostname:
            fqdn = await asyncio.to_thread(socket.getfqdn)
            self.notifier.report = self._report_settings(fqdn)
        released = await self.writer.write(
            functools.partial(records.release_leases, node=self.node)
        )
        if released:
            log.info("leases of a previous run released", node=self.node, messages=released)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="queue delivery")
        routes = [r.name for r in self.router.routes]
        hop = self.router.default.settings.next_hop[0]
        log.info("delivery started", node=self.node, routes=routes, next_hop=hop)

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
        self.destinations.close()
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
        notices = self.notifier.settle(queued, outcomes, time.time())
        done = bool(outcomes) and queued.rest_final and all(o.state in FINAL for o in outcomes)
        await self._record(queued.id, notices, done)

    async def _record(self, queue_id: str, notices: Notices, done: bool) -> None:
        outcomes = notices.outcomes
        write = functools.partial(
            records.record,
            queue_id=queue_id,
            node=self.node,
            outcomes=outcomes,
            done=done,
            reports=notices.reports,
            delay_warned=notices.delay_warned,
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
        if notices.reports:
            self.reports += len(notices.reports)
            self.wake()  # the DSNs are due at once

    async def _attempt(self, queued: Queued) -> list[Outcome]:
        """One delivery attempt of the due recipients, each destination in a transaction of
        its own, all at once; an outcome for each recipient."""
        groups: dict[Destination, list[QueuedRecipient]] = {}
        for r in queued.recipients:
            route = self.router.route(queued.sender, r.address)
            destination = self.destinations.get(route, route.destination(r.address))
            groups.setdefault(destination, []).append(r)
        attempts = [self._attempt_destination(queued, d, due) for d, due in groups.items()]
        if len(attempts) == 1:
            return await attempts[0]
        return [o for outcomes in await asyncio.gather(*attempts) for o in outcomes]

    async def _attempt_destination(
        self, queued: Queued, destination: Destination, due: list[QueuedRecipient]
    ) -> list[Outcome]:
        """Send the message to the `due` recipients that go to `destination`."""
        async with destination.slot():
            try:
                conn, reused = await destination.pool.acquire()
            except (DownstreamError, NoRoute) as exc:
                outcomes = self._all(queued, exc.reply, due)
            else:
                outcomes = await self._transaction(queued, destination.pool, conn, reused, due)
        if self.on_delivery is not None:
            for outcome in outcomes:
                self.on_delivery(destination.route.name, outcome.state)
        return outcomes

    async def _transaction(
        self,
        queued: Queued,
        pool: ConnectionPool,
        conn: DownstreamConnection,
        reused: bool,
        due: list[QueuedRecipient],
    ) -> list[Outcome]:
        """MAIL, RCPT for each of `due`, the message: an outcome for each recipient, naming
        the host that answered."""
        try:
            try:
                mail = await _mail(conn, queued)
            except DownstreamError:
                if not reused:
                    raise
                # The pooled connection went stale while idle: a fresh one, once.
                conn = await pool.open_new()
                mail = await _mail(conn, queued)
            if not mail.ok:
                await self._reset(pool, conn)
                return _answered(conn, self._all(queued, mail, due))
            accepted: list[QueuedRecipient] = []
            outcomes: list[Outcome] = []
            for r in due:
                reply = await conn.rcpt_to(r.address)
                if reply.ok:
                    accepted.append(r)
                else:
                    outcomes.append(self._outcome(r, reply, queued))
            if not accepted:
                await self._reset(pool, conn)
                return _answered(conn, outcomes)
            final = await conn.send_message(_message(queued))
        except (DownstreamError, NoRoute) as exc:
            pool.discard(conn)
            return _answered(conn, self._all(queued, exc.reply, due))
        except BaseException:
            pool.discard(conn)
            raise
        if final.code // 100 == 2:
            pool.release(conn)
        else:
            await self._reset(pool, conn)
        return _answered(conn, outcomes + [self._outcome(r, final, queued) for r in accepted])

    async def _reset(self, pool: ConnectionPool, conn: DownstreamConnection) -> None:
        if await conn.reset():
            pool.release(conn)
        else:
            pool.discard(conn)

    def _all(
        self, queued: Queued, reply: Reply, recipients: list[QueuedRecipient] | None = None
    ) -> list[Outcome]:
        due = queued.recipients if recipients is None else recipients
        return [self._outcome(r, reply, queued) for r in due]

    def _outcome(self, recipient: QueuedRecipient, reply: Reply, queued: Queued) -> Outcome:
        now = time.time()
        attempts = recipient.attempts + 1
        text = reply.smtp_reply().replace("\r\n", " ")
        if reply.failure:
            text = f"{text} ({reply.failure})"
        status = reply.status or f"{reply.code // 100}.0.0"
        expired = False
        if 200 <= reply.code < 300:
            state, next_attempt = DELIVERED, None
        elif 500 <= reply.code < 600:
            state, next_attempt = BOUNCED, None
        else:
            times = self.schedule.times(
                queued.sender, [r.address for r in queued.recipients], recipient.address
            )
            expires = queued.created + times.max_age
            if now >= expires:
                state, next_attempt, expired, status = BOUNCED, None, True, "4.4.7"
            else:
                # One last try when the time is up, rather than a bounce a back-off late.
                next_attempt = min(now + times.backoff(attempts), expires)
                state = DEFERRED
        remote = ""  # the host that answered is filled in by _answered
        diagnostic = f"X-mailgate; {text}" if reply.failure else f"smtp; {text}"
        log.info(
            "delivery",
            queue_id=queued.id,
            rcpt=recipient.address.address,
            status=state,
            reply=text,
            attempts=attempts,
            delay=round(now - queued.created, 3),
            **({"expired": True} if expired else {}),
        )
        if expired:
            text = f"delivery time expired; last reply: {text}"
        return Outcome(
            recipient.position,
            state,
            attempts,
            next_attempt,
            text,
            status=status,
            diagnostic=diagnostic,
            remote_mta=remote,
            expired=expired,
        )


async def _mail(conn: DownstreamConnection, queued: Queued) -> Reply:
    # A next hop offering DSN takes the DSN parameters (RET, ENVID here, NOTIFY and ORCPT
    # at RCPT) and reports a NOTIFY=SUCCESS delivery itself.
    queued.next_hop_dsn = conn.supports("dsn")
    return await conn.mail_from(queued.sender, len(queued.content))


def _answered(conn: DownstreamConnection, outcomes: list[Outcome]) -> list[Outcome]:
    """`outcomes` naming the host `conn` talks to as the one that answered."""
    return [dataclasses.replace(o, remote_mta=conn.remote) for o in outcomes]


def _message(queued: Queued) -> Message:
    """The stored content as a `Message` for the relay's sender (headers re-parsed unchanged:
    a header's raw value keeps its folding, so the bytes sent are the bytes stored)."""
    head = queued.content[: queued.header_size - 2]  # without the empty line
    body = BytesIO(queued.content[queued.header_size :])
    return Message(parse_header_block(head), body)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}"
