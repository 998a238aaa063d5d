"""The `spamassassin` plugin: score every message with spamd at the end of data."""

from __future__ import annotations

import time

from mailgate import Message, Session, Transaction, Verdict, hookimpl
from mailgate.plugins.spamassassin.settings import SpamassassinSettings
from mailgate.plugins.spamassassin.spamd_client import SpamdClient, SpamReport
from mailgate.sockaddr import SocketAddress

RESULT_KEY = "spamassassin"
"""The key of this plugin's entry in ``transaction.results``."""


def fold_status(value: str, width: int = 76) -> str:
    """Fold a long ``X-Spam-Status`` value after commas, as SpamAssassin does."""
    lines = [""]
    for i, part in enumerate(value.split(",")):
        piece = part if i == 0 else "," + part
        if len(lines[-1]) + len(piece) > width and lines[-1]:
            lines[-1] += ","
            lines.append(part)
        else:
            lines[-1] += piece
    return "\r\n\t".join(lines)


def format_score(score: float) -> str:
    """One decimal, as SpamAssassin writes scores; never ``-0.0``."""
    text = f"{score:.1f}"
    return "0.0" if text == "-0.0" else text


class SpamassassinPlugin:
    """Score each message with spamd; tag, quarantine or reject by threshold.

    spamd being unreachable raises, so the plugin's ``on_error`` policy applies:
    ``accept`` is fail-open, ``tempfail`` (the default) fail-closed.
    """

    Settings = SpamassassinSettings
    concurrent = True
    reads = frozenset({"headers", "body"})
    """spamd scores the whole message; forged X-Spam-* headers are removed."""

    def __init__(self, settings: SpamassassinSettings | None = None) -> None:
        self.settings = settings or SpamassassinSettings()
        self.client = SpamdClient(
            [SocketAddress.parse(s) for s in self.settings.servers],
            connect_timeout=self.settings.connect_timeout,
            timeout=self.settings.scan_timeout,
        )

    @hookimpl
    async def on_message(
        self, session: Session, transaction: Transaction, message: Message
    ) -> Verdict | None:
        """Remove forged spam headers, score the message and act on the score."""
        # Before talking to spamd: with on_error = "accept", forged headers still go.
        self._remove_forged(transaction, message)
        size = message.size
        if size > self.settings.max_size:
            reason = f"{size} bytes over max_size {self.settings.max_size}"
            transaction.set_result(RESULT_KEY, "skipped", reason=reason)
            return None
        user = self.settings.user.value(session, transaction)
        started = time.perf_counter()
        report = await self.client.check(message.iter_bytes, size, user)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        return self._act(session, transaction, message, report, elapsed_ms)

    def _act(
        self,
        session: Session,
        transaction: Transaction,
        message: Message,
        report: SpamReport,
        elapsed_ms: float,
    ) -> Verdict | None:
        tag = float(self.settings.tag_threshold.value(session, transaction))
        quarantine = float(self.settings.quarantine_threshold.value(session, transaction))
        reject = float(self.settings.reject_threshold.value(session, transaction))
        score = report.score
        action = (
            "reject"
            if score >= reject
            else "quarantine"
            if score >= quarantine
            else "tag"
            if score >= tag
            else "none"
        )
        transaction.set_result(
            RESULT_KEY,
            "spam" if score >= tag else "ham",
            score=score,
            reason=",".join(report.rules),
            rules=report.rules,
            action=action,
            required=tag,
            spamd_threshold=report.threshold,
            server=report.server,
            elapsed_ms=elapsed_ms,
        )
        if action == "reject":
            return Verdict.reject(
                554, "5.7.1", self.settings.reject_text, reason=f"spam score {score:.1f}"
            )
        self._add_headers(transaction, message, report, tag)
        if action == "quarantine":
            return Verdict.quarantine(reason=f"spam score {score:.1f}")
        return None

    def _remove_forged(self, transaction: Transaction, message: Message) -> None:
        # Deletions are applied in order, so deleting the first occurrence N times removes N.
        for name in self.settings.remove_headers:
            for _ in message.get_all(name):
                transaction.delete_header(name, 1)

    def _add_headers(
        self, transaction: Transaction, message: Message, report: SpamReport, tag: float
    ) -> None:
        is_spam = report.score >= tag
        if self.settings.add_headers:
            status = (
                f"{'Yes' if is_spam else 'No'}, score={format_score(report.score)} "
                f"required={format_score(tag)} "
                f"tests={','.join(report.rules) or 'none'}"
            )
            transaction.add_header("X-Spam-Status", fold_status(status))
            transaction.add_header("X-Spam-Score", format_score(report.score))
        if not is_spam:
            return
        transaction.add_header("X-Spam-Flag", "YES")
        prefix = self.settings.subject_tag
        subject = message.get("Subject")
        if prefix and subject is None:
            transaction.add_header("Subject", prefix)
        elif prefix and subject is not None and not subject.startswith(prefix):
            transaction.change_header("Subject", f"{prefix} {subject}")
