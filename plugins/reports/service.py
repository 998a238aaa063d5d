"""`ReportingService`: one node's reporting: evaluations into the store, reports out of it.

- **Recording** (the hot path): `record` appends a row to a bounded list in memory; every
  ``flush_interval`` the list goes to the store in one multi-row INSERT through a
  `GroupCommit`. A session never waits for the store: a crash loses at most the last
  interval's evaluations (statistics, not mail). When the store cannot keep up, rows past
  ``max_buffered`` are counted and dropped.
- **Reporting** (`send_due`, every ``check_interval``): for each policy domain and period
  that ended ``send_delay`` ago and has no report yet, it checks the destinations (external
  ones need their verification record), builds the report from the grouped rows, and in one
  transaction records it in ``dmarc_reports`` and queues one mail per destination. The
  unique key (domain, period) makes nodes sharing a PostgreSQL store send each report once:
  the second node's transaction fails on it and queues nothing.
- **Retention**: rows older than ``retention_days`` are deleted at each check.
- **Failure reports** (`failures`, when ``failure_reports`` is on): see `FailureReports`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.dns import DnsSettings, async_resolver
from mailgate.logging import get_logger
from mailgate.plugins.reports import records
from mailgate.plugins.reports.aggregate import AggregateWriter, Metadata, ReportTooLarge
from mailgate.plugins.reports.destinations import (
    Destination,
    VerificationUnavailable,
    needs_verification,
    parse_destination,
    verify,
)
from mailgate.plugins.reports.incoming import Received
from mailgate.plugins.reports.mail import ReportMail
from mailgate.plugins.reports.ruf import FailureReports
from mailgate.plugins.reports.settings import ReportsSettings
from mailgate.plugins.reports.signing import ReportSigner
from mailgate.queue.records import NewMessage, new_queue_id
from mailgate.session import Address, Transaction
from mailgate.store import GroupCommit, Rows, Store, StoreSettings
from mailgate.store.schema import dmarc_received, dmarc_reports

log = get_logger("mailgate.plugins.reports")


class ReportMetrics:
    """The reporting counters, in the app's registry (or a private one)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.sent = Counter(
            "mailgate_dmarc_reports_sent", "DMARC aggregate reports queued for sending", registry=r
        )
        self.failed = Counter(
            "mailgate_dmarc_reports_failed",
            "DMARC aggregate reports not sent (no usable destination, too large, store error)",
            registry=r,
        )
        self.recorded = Counter(
            "mailgate_dmarc_evaluations_recorded", "DMARC evaluations written", registry=r
        )
        self.dropped = Counter(
            "mailgate_dmarc_evaluations_dropped",
            "DMARC evaluations dropped because the store could not keep up",
            registry=r,
        )
        self.received = Counter(
            "mailgate_dmarc_reports_received",
            "Reports received and stored, by kind (aggregate, failure, tlsrpt, malformed)",
            ["kind"],
            registry=r,
        )
        self.failure_reports = Counter(
            "mailgate_dmarc_failure_reports",
            "DMARC failure reports: sent (queued), limited (over the rate limit), failed",
            ["status"],
            registry=r,
        )

    def close(self) -> None:
        """Take the counters out of the registry (a later service may register them again)."""
        for counter in (
            self.sent,
            self.failed,
            self.recorded,
            self.dropped,
            self.failure_reports,
            self.received,
        ):
            with contextlib.suppress(KeyError):  # already closed
                self.registry.unregister(counter)


@dataclass(slots=True)
class DestinationOutcome:
    """What became of one rua URI of a report."""

    uri: str
    status: str
    """``queued``, ``too large`` (an error report was queued instead), ``not authorized``,
    or why it cannot be used."""
    queue_id: str = ""


@dataclass(slots=True)
class ReportOutcome:
    """One report built (or attempted) for a domain and period."""

    domain: str
    begin: int
    end: int
    report_id: str = ""
    state: str = ""
    """``sent`` (queued to at least one destination), ``undeliverable`` (recorded, nothing
    queued), ``already sent`` (another node's), ``retry`` (DNS failed: tried again later),
    ``dry run``."""
    records: int = 0
    messages: int = 0
    size: int = 0
    destinations: list[DestinationOutcome] = field(default_factory=list)
    xml: bytes = b""
    """The gzipped report (kept for ``--dry-run``)."""


class ReportingService:
    """See the module docstring. `start`, `record`, `stop`; `send_due` runs by itself."""

    def __init__(
        self,
        settings: ReportsSettings,
        store: StoreSettings,
        node: str,
        *,
        dns: DnsSettings | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.store = Store(store)
        self.writer = GroupCommit(self.store)
        self.resolver = async_resolver(dns or DnsSettings())
        self.metrics = ReportMetrics(registry)
        self.signer: ReportSigner | None = None
        """Signs report mail with the dkim plugin's keys, when it is enabled."""
        self.failures = FailureReports(
            settings, self.resolver, self._queue_one, self._count_failure_report
        )
        self._buffer: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing = asyncio.Lock()

    def configure(self, settings: ReportsSettings) -> None:
        """Use `settings` from now on (a reload's)."""
        self.settings = self.failures.settings = settings

    async def open(self) -> None:
        """Open (and migrate) the store and start its writer; no background work."""
        await self.store.open()
        self.writer.start()

    async def start(self) -> None:
        """`open`, then start the flushing and reporting loops."""
        await self.open()
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="reports flush"),
            asyncio.create_task(self._report_loop(), name="reports job"),
        ]

    async def stop(self) -> None:
        """Stop the loops, write what is buffered, close the store."""
        await self.failures.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush()
        await self.writer.stop()
        await self.store.close()
        self.metrics.close()

    # -- recording --------------------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        """Keep `row` for the next flush (never waits, never raises)."""
        if len(self._buffer) >= self.settings.max_buffered:
            self.metrics.dropped.inc()
            return
        self._buffer.append(row)

    async def flush(self) -> int:
        """Write the buffered rows now (after a flush already on its way); how many."""
        async with self._flushing:
            rows, self._buffer = self._buffer, []
            if not rows:
                return 0
            try:
                await self.writer.write(lambda conn: records.write_evaluations(conn, rows))
            except Exception as exc:
                room = max(0, self.settings.max_buffered - len(self._buffer))
                self._buffer[:0] = rows[:room]
                log.warning("dmarc evaluations not written, kept for the next try", error=str(exc))
                return 0
            self.metrics.recorded.inc(len(rows))
            return len(rows)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            await self.flush()

    # -- failure reports ----------------------------------------------------------------------

    def _count_failure_report(self, status: str) -> None:
        self.metrics.failure_reports.labels(status).inc()

    async def _queue_one(self, to: str, content: bytes) -> str:
        """Queue one mail from the report sender to `to`; its queue id."""
        new = self._queued(to, content)
        await self.writer.insert(new.rows(), size=len(content))
        return new.id

    # -- reports received -------------------------------------------------------------------

    async def store_received(self, reports: list[Received], mail_from: str) -> list[str]:
        """Store `reports` (read from one mail from `mail_from`); their ids, once committed."""
        now = time.time()
        ids = [new_queue_id() for _ in reports]
        rows: list[dict[str, Any]] = [
            {
                "id": report_id,
                "received": now,
                "kind": r.kind,
                "mail_from": mail_from,
                "org_name": r.org_name[:1000],
                "report_id": r.report_id[:1000],
                "domain": r.domain[:255],
                "period_begin": r.begin,
                "period_end": r.end,
                "messages": r.messages,
                "passed": r.passed,
                "detail": json.dumps(r.detail),
                "error": r.error,
                "raw": r.raw or None,
            }
            for report_id, r in zip(ids, reports, strict=True)
        ]
        size = sum(len(r.raw) for r in reports)
        await self.writer.insert(Rows(((dmarc_received, rows),)), size=size)
        for r in reports:
            self.metrics.received.labels(r.kind).inc()
        return ids

    # -- reporting --------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            try:
                await self.send_due()
                await self.expire()
            except Exception as exc:  # the next round tries again
                log.error("dmarc reporting failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.settings.check_interval)

    async def pending(self, now: float | None = None, domain: str = "") -> list[records.Period]:
        """The periods due for a report at `now`."""
        before = (time.time() if now is None else now) - self.settings.send_delay
        async with self.store.engine.connect() as conn:
            return await records.pending(conn, before, domain)

    async def send_due(
        self, now: float | None = None, *, dry_run: bool = False, domain: str = ""
    ) -> list[ReportOutcome]:
        """Build and queue every report due at `now` (default: the clock); with `dry_run`,
        build them only. One outcome per domain and period."""
        outcomes = []
        for period in await self.pending(now, domain):
            outcome = await self.report(period, dry_run=dry_run)
            outcomes.append(outcome)
            if not dry_run:
                _log_outcome(outcome)
        return outcomes

    async def report(self, period: records.Period, *, dry_run: bool = False) -> ReportOutcome:
        """Build the report of one domain and period, and (unless `dry_run`) send it."""
        outcome = ReportOutcome(period.domain, period.begin, period.end)
        async with self.store.engine.connect() as conn:
            published = await records.published(conn, period)
            usable, refused = await self._destinations(period.domain, published.rua)
            if usable is None:
                outcome.state = "retry"
                return outcome
            outcome.report_id = f"{period.begin}{secrets.token_hex(6)}"
            try:
                await self._build(conn, period, published.policy, outcome)
            except ReportTooLarge as exc:
                outcome.state = "undeliverable"
                refused = [DestinationOutcome(d.uri, f"report {exc}") for d in usable] + refused
                usable = []
        outcome.destinations = refused
        if dry_run:
            outcome.state = "dry run"
            outcome.destinations += [DestinationOutcome(d.uri, "would be queued") for d in usable]
            return outcome
        mails = self._mails(outcome, usable)
        try:
            await self.store.transaction(lambda conn: self._claim(conn, outcome, mails))
        except IntegrityError:
            outcome.state = "already sent"
            outcome.destinations = []
            return outcome
        except Exception:
            self.metrics.failed.inc()
            raise
        (self.metrics.sent if outcome.state == "sent" else self.metrics.failed).inc()
        return outcome

    async def _destinations(
        self, domain: str, uris: list[str]
    ) -> tuple[list[Destination] | None, list[DestinationOutcome]]:
        """The destinations reports may go to, and what is wrong with the others; None for
        the first when a verification lookup failed (the report waits for the next round)."""
        usable, refused = [], []
        for destination in map(parse_destination, uris):
            if destination.problem:
                refused.append(DestinationOutcome(destination.uri, destination.problem))
                continue
            if needs_verification(domain, destination):
                try:
                    allowed = await verify(self.resolver, domain, destination)
                except VerificationUnavailable as exc:
                    log.warning("dmarc report destination not verified now", error=str(exc))
                    return None, []
                if not allowed:
                    why = f"not authorized: no {domain}._report._dmarc.{destination.domain}"
                    refused.append(DestinationOutcome(destination.uri, why))
                    continue
            usable.append(destination)
        return usable, refused

    async def _build(
        self,
        conn: AsyncConnection,
        period: records.Period,
        policy: dict[str, Any],
        outcome: ReportOutcome,
    ) -> None:
        settings = self.settings
        writer = AggregateWriter(settings.max_report_size)
        metadata = Metadata(
            settings.org_name,
            settings.contact,
            settings.extra_contact_info,
            outcome.report_id,
            period.begin,
            period.end - 1,
        )
        writer.start(metadata, policy)
        async for group in records.groups(conn, period):
            writer.record(group)
        outcome.xml = writer.finish()
        outcome.records, outcome.messages, outcome.size = (
            writer.records,
            writer.messages,
            len(outcome.xml),
        )

    def _mails(
        self, outcome: ReportOutcome, usable: list[Destination]
    ) -> list[tuple[DestinationOutcome, NewMessage]]:
        """One queued mail per destination: the report, or the error report when the report
        is larger than the destination's ``!size``."""
        settings = self.settings
        mail = ReportMail(
            settings.org_name,
            settings.sender,
            settings.submitter_name,
            outcome.domain,
            outcome.report_id,
            outcome.begin,
            outcome.end - 1,
        )
        made = []
        for d in usable:
            content = mail.aggregate(d.address, outcome.xml, outcome.records, outcome.messages)
            status = "queued"
            if d.max_size and len(content) > d.max_size:
                content = mail.too_large(d.address, d.uri, len(content))
                status = f"too large ({d.max_size} bytes at most): error report queued"
            made.append((DestinationOutcome(d.uri, status), self._queued(d.address, content)))
        return made

    def _queued(self, to: str, content: bytes) -> NewMessage:
        if self.signer is not None:
            content = self.signer.sign(content, self.settings.sender.rpartition("@")[2])
        transaction = Transaction(Address(self.settings.sender), [Address(to)])
        header_size = content.index(b"\r\n\r\n") + 4
        return NewMessage.build(transaction, content, header_size, self.node)

    async def _claim(
        self,
        conn: AsyncConnection,
        outcome: ReportOutcome,
        mails: list[tuple[DestinationOutcome, NewMessage]],
    ) -> None:
        """Record the report (the unique key refuses a second one) and queue its mails, in
        the caller's one transaction."""
        for destination, new in mails:
            destination.queue_id = new.id
        outcome.destinations = [d for d, _ in mails] + outcome.destinations
        if outcome.state != "undeliverable":
            outcome.state = "sent" if mails else "undeliverable"
        await conn.execute(
            insert(dmarc_reports).values(
                id=outcome.report_id,
                domain=outcome.domain,
                period_begin=outcome.begin,
                period_end=outcome.end,
                node=self.node,
                created=time.time(),
                state=outcome.state,
                messages=outcome.messages,
                records=outcome.records,
                size=outcome.size,
                destinations=json.dumps(
                    [
                        {"uri": d.uri, "status": d.status, "queue_id": d.queue_id}
                        for d in outcome.destinations
                    ]
                ),
            )
        )
        for _, new in mails:
            for table, values in new.rows().tables:
                await conn.execute(insert(table), values)

    async def expire(self, now: float | None = None) -> tuple[int, int]:
        """Delete evaluations and report records past ``retention_days``."""
        cutoff = (time.time() if now is None else now) - self.settings.retention_days * 86400
        deleted = await self.store.transaction(lambda conn: records.delete_older_than(conn, cutoff))
        if any(deleted):
            log.info("dmarc records expired", evaluations=deleted[0], reports=deleted[1])
        return deleted


def _log_outcome(outcome: ReportOutcome) -> None:
    log.info(
        "dmarc report",
        domain=outcome.domain,
        begin=outcome.begin,
        end=outcome.end,
        report_id=outcome.report_id,
        state=outcome.state,
        records=outcome.records,
        messages=outcome.messages,
        size=outcome.size,
        destinations=[f"{d.uri}: {d.status}" for d in outcome.destinations],
    )
