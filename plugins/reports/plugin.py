"""The ``reports`` plugin: records each DMARC evaluation for the aggregate reports, and
sends failure reports when asked to.

It reads what the ``dmarc`` plugin left in ``transaction.notes["dmarc_evaluation"]`` at the
outcome of each message, so its ``conf.d`` file comes after dmarc's (``95-reports.toml``).
The work with the store (writing, building and sending reports, retention) is the node's
`ReportingService`, started by the app with the plugin (`start`, `stop`). A configuration
reload makes a new plugin instance that shares the running service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from mailgate import Address, Message, Session, Transaction, Verdict, hookimpl
from mailgate.dns import DnsSettings
from mailgate.logging import get_logger
from mailgate.plugin import PluginContext
from mailgate.plugins.dkim import Dkim
from mailgate.plugins.dmarc import EVALUATION_NOTE, Evaluation
from mailgate.plugins.reports.incoming import Limits, parse_mail
from mailgate.plugins.reports.records import evaluation_row
from mailgate.plugins.reports.service import ReportingService
from mailgate.plugins.reports.settings import ReportsSettings
from mailgate.plugins.reports.signing import ReportSigner
from mailgate.verdict import VerdictKind

log = get_logger("mailgate.plugins.reports")

INCOMING_NOTE = "reports.incoming"
"""``transaction.notes[INCOMING_NOTE]``: the recipients that are report addresses."""

_services: dict[tuple[str, str], tuple[ReportingService, int]] = {}
"""The running services by (store URL, node), with how many plugin instances use each."""


class Reports:
    """Keeps one row per message DMARC evaluated; the node sends the reports from them."""

    Settings = ReportsSettings
    reads: frozenset[str] = frozenset({"headers", "body"})
    """Reports received are read from the whole message (the evaluations need neither)."""

    def __init__(
        self, settings: ReportsSettings | None = None, *, dns: DnsSettings | None = None
    ) -> None:
        if settings is None:
            raise ValueError("org_name, contact and sender are required")
        self.settings = settings
        self.dns = dns or DnsSettings()
        self.service: ReportingService | None = None
        self._key: tuple[str, str] | None = None
        self._incoming = settings.incoming.source.strip() != "false"
        """False when no recipient can be a report address: the hooks return at once."""

    async def start(self, context: PluginContext) -> None:
        """Join (or start) this node's reporting service on the app's store."""
        if not context.queue:
            log.warning(
                "dmarc reports are queued, but this node has no [queue] to deliver them; "
                "another node sharing the store must have one"
            )
        key = (context.store.url, self.settings.node_id or context.node)
        found = _services.get(key)
        if found is None:
            service = ReportingService(
                self.settings, context.store, key[1], dns=self.dns, registry=context.registry
            )
            await service.start()
            found = (service, 0)
        service, users = found
        service.configure(self.settings)  # a reload's settings apply from now on
        dkim = next((p for p in context.plugins if isinstance(p, Dkim)), None)
        service.signer = ReportSigner(dkim.settings) if dkim and dkim.settings.keys else None
        _services[key] = (service, users + 1)
        self.service, self._key = service, key

    async def stop(self) -> None:
        """Leave the service; the last instance to leave stops it."""
        key, self._key, self.service = self._key, None, None
        if key is None or key not in _services:
            return
        service, users = _services[key]
        if users > 1:
            _services[key] = (service, users - 1)
            return
        del _services[key]
        await service.stop()

    @hookimpl
    def on_rcpt(self, session: Session, transaction: Transaction, recipient: Address) -> None:
        """Note the recipients that are report addresses (``incoming``)."""
        if self._incoming and self.settings.incoming(session, transaction):
            transaction.notes.setdefault(INCOMING_NOTE, []).append(recipient.address)

    @hookimpl
    def on_message(
        self, session: Session, transaction: Transaction, message: Message
    ) -> Awaitable[Verdict | None] | None:
        """Read and store the reports in a mail to report addresses; then, with ``keep``,
        take those recipients off (and drop a mail left with none). Returns at once (no
        coroutine) for every other mail."""
        addresses: list[str] = transaction.notes.get(INCOMING_NOTE, [])
        if not addresses:
            return None
        return self._receive(transaction, message, addresses)

    async def _receive(
        self, transaction: Transaction, message: Message, addresses: list[str]
    ) -> Verdict | None:
        service = self.service
        if service is None:
            return Verdict.tempfail(451, "4.3.0", "Report store not available, try again later")
        settings = self.settings
        limits = Limits(
            settings.max_incoming_part, settings.max_decompressed, settings.max_zip_entries
        )
        raw = message.as_bytes()  # at most the listener's max_message_size
        reports = await asyncio.to_thread(parse_mail, raw, limits)
        try:
            ids = await service.store_received(reports, transaction.sender.address)
        except Exception as exc:
            log.warning("dmarc reports received not stored", error=str(exc))
            return Verdict.tempfail(451, "4.3.0", "Report store unavailable, try again later")
        log.info(
            "dmarc reports received",
            kinds=[r.kind for r in reports],
            domains=[r.domain for r in reports],
            errors=[r.error for r in reports if r.error],
            ids=ids,
        )
        if settings.incoming_action == "deliver":
            return None
        keep = {a.lower() for a in addresses}
        if all(r.address.lower() in keep for r in transaction.recipients):
            return Verdict.discard(reason=f"reports stored: {', '.join(ids)}")
        for address in dict.fromkeys(addresses):
            transaction.delete_recipient(address)
        return None

    @hookimpl
    def on_outcome(self, transaction: Transaction, verdict: Verdict) -> None:
        """Keep the evaluation of a message that was answered for good (a tempfailed one
        comes again and is counted then)."""
        service = self.service
        if service is None or verdict.kind is VerdictKind.TEMPFAIL:
            return
        evaluation = transaction.notes.get(EVALUATION_NOTE)
        if not isinstance(evaluation, Evaluation) or evaluation.policy_published is None:
            return
        now = time.time()
        period = self.settings.period(evaluation.policy_published.ri)
        row = evaluation_row(evaluation, now, period)
        if row is not None:
            service.record(row)
        message = transaction.message
        if self.settings.failure_reports and message is not None:
            headers = b"".join(h.to_bytes() for h in message.arrived_headers)
            service.failures.consider(evaluation, transaction.sender.address, headers, now)
