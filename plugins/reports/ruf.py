"""`FailureReports`: sending failure reports (``ruf``) as messages fail, rate-limited.

Called from the plugin's `on_outcome` (never waits): it checks the domain's ``fo``, takes a
slot of the domain's rate limit, and leaves the rest (the external destination lookups,
building, queueing) to a task of its own. The report mail is queued through the service's
group commit like any other write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import dns.asyncresolver

from mailgate.logging import get_logger
from mailgate.plugins.dmarc import Evaluation
from mailgate.plugins.reports.destinations import (
    VerificationUnavailable,
    needs_verification,
    parse_destination,
    verify,
)
from mailgate.plugins.reports.failure import FailureReport, wanted
from mailgate.plugins.reports.settings import ReportsSettings

log = get_logger("mailgate.plugins.reports")

Queue = Callable[[str, bytes], Awaitable[str]]
"""Queues one mail to an address; returns the queue id."""


class FailureReports:
    """One node's failure reports (see the module docstring)."""

    def __init__(
        self,
        settings: ReportsSettings,
        resolver: dns.asyncresolver.Resolver,
        queue: Queue,
        counted: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self._queue = queue
        self._counted = counted
        """Told ``sent``, ``limited`` or ``failed`` for each report (metrics)."""
        self._window = -1
        self._sent_in_window: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def consider(
        self, evaluation: Evaluation, mail_from: str, headers: bytes, now: float | None = None
    ) -> bool:
        """Start a report about `evaluation` if the domain asks for one and the rate limit
        allows; True when one was started."""
        policy = evaluation.policy_published
        if policy is None or not policy.ruf or not wanted(evaluation, policy.fo):
            return False
        now = time.time() if now is None else now
        if not self._take_slot(policy.domain, now):
            self._counted("limited")
            return False
        report = FailureReport(
            self.settings.org_name,
            self.settings.sender,
            self.settings.submitter_name,
            evaluation,
            mail_from,
            now,
            headers,
        )
        task = asyncio.get_running_loop().create_task(self._send(report, list(policy.ruf)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _take_slot(self, domain: str, now: float) -> bool:
        window = int(now // self.settings.failure_period)
        if window != self._window:
            self._window, self._sent_in_window = window, {}
        sent = self._sent_in_window.get(domain, 0)
        if sent >= self.settings.failure_reports_per_domain:
            return False
        self._sent_in_window[domain] = sent + 1
        return True

    async def _send(self, report: FailureReport, uris: list[str]) -> None:
        domain = report.evaluation.policy_published.domain  # type: ignore[union-attr]
        queued = []
        for destination in map(parse_destination, uris):
            if destination.problem:
                continue
            try:
                if needs_verification(domain, destination) and not await verify(
                    self.resolver, domain, destination
                ):
                    continue
                content = report.build(
                    destination.address, redacted=self.settings.redact_local_parts
                )
                if destination.max_size and len(content) > destination.max_size:
                    continue
                queued.append(await self._queue(destination.address, content))
            except (VerificationUnavailable, Exception) as exc:
                log.warning("dmarc failure report not sent", domain=domain, error=str(exc))
        self._counted("sent" if queued else "failed")
        log.info(
            "dmarc failure report",
            domain=domain,
            source_ip=report.evaluation.source_ip,
            queue_ids=queued,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the reports on their way finish (for at most `timeout` seconds)."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task
