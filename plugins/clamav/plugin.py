"""The `clamav` plugin: every message goes through clamd at the end of data."""

from __future__ import annotations

import time

from mailgate import Message, Session, Transaction, Verdict, hookimpl
from mailgate.plugins.clamav.clamd_client import (
    ClamdClient,
    ClamdSizeLimitError,
    ScanResult,
)
from mailgate.plugins.clamav.settings import ClamavSettings
from mailgate.sockaddr import SocketAddress

RESULT_KEY = "clamav"
"""The key of this plugin's entry in ``transaction.results``."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ClamavPlugin:
    """Scan each message with clamd (INSTREAM); reject, quarantine or tag what it finds.

    A scan failure on every server raises, so the plugin's ``on_error`` policy applies
    (``tempfail`` unless configured otherwise).
    """

    Settings = ClamavSettings
    concurrent = True
    reads = frozenset({"headers", "body"})
    """clamd scans the whole message."""

    def __init__(self, settings: ClamavSettings | None = None) -> None:
        self.settings = settings or ClamavSettings()
        self.client = ClamdClient(
            [SocketAddress.parse(s) for s in self.settings.servers],
            connect_timeout=self.settings.connect_timeout,
            scan_timeout=self.settings.scan_timeout,
            chunk_size=self.settings.chunk_size,
        )

    @hookimpl
    async def on_message(
        self, session: Session, transaction: Transaction, message: Message
    ) -> Verdict | None:
        """Scan the message and act on the answer."""
        size = message.size
        if size > self.settings.max_size.value(session, transaction):
            return self._over_size(session, transaction, f"{size} bytes over max_size")
        started = time.perf_counter()
        try:
            result = await self.client.scan(lambda: message.iter_bytes(self.settings.chunk_size))
        except ClamdSizeLimitError as exc:
            return self._over_size(session, transaction, f"clamd: {exc}")
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        if not result.infected:
            transaction.set_result(RESULT_KEY, "clean", server=result.server, elapsed_ms=elapsed_ms)
            if self.settings.tag_clean:
                self._set_header(transaction, message, "Clean")
            return None
        action = self.settings.action.value(session, transaction)
        return self._infected(transaction, message, result, elapsed_ms, action)

    def _infected(
        self,
        transaction: Transaction,
        message: Message,
        result: ScanResult,
        elapsed_ms: float,
        action: str,
    ) -> Verdict | None:
        virus = _one_line(result.virus or "")
        transaction.set_result(
            RESULT_KEY,
            "found",
            reason=virus,
            action=action,
            server=result.server,
            elapsed_ms=elapsed_ms,
        )
        if action == "reject":
            text = _one_line(self.settings.reject_text.format(virus=virus))
            return Verdict.reject(554, "5.7.1", text, reason=f"virus {virus}")
        self._set_header(transaction, message, f"Infected ({virus})")
        if action == "quarantine":
            return Verdict.quarantine(reason=f"virus {virus}")
        return None

    def _set_header(self, transaction: Transaction, message: Message, value: str) -> None:
        # Delete what the sender may have forged before adding ours; deleting the first
        # occurrence N times works because deferred deletions are applied in order.
        for _ in message.get_all(self.settings.header):
            transaction.delete_header(self.settings.header, 1)
        transaction.add_header(self.settings.header, value)

    def _over_size(self, session: Session, transaction: Transaction, why: str) -> Verdict | None:
        policy = self.settings.over_size.value(session, transaction)
        transaction.set_result(RESULT_KEY, "skipped", reason=why, policy=policy)
        if policy == "tempfail":
            return Verdict.tempfail(
                451, "4.7.1", "Message too large to scan for viruses", reason=why
            )
        if policy == "reject":
            return Verdict.reject(552, "5.3.4", "Message too large to scan for viruses", reason=why)
        return None
