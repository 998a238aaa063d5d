"""recipient_verify: refuse unknown local recipients at RCPT with ``550 5.1.1``.

For a recipient of one of ``domains``, the directory is asked whether it exists (first as
given, then without its subaddress). Unknown: ``550 5.1.1 Recipient address rejected: User
unknown``. A recipient that ``rewrite`` already replaced (a catch-all, an alias, a map entry)
is left alone, so put this plugin after ``rewrite`` in ``conf.d``: the catch-all applies
first. No directory answer (no backend, or none serves the domain) lets the recipient
through. A dead directory follows the backend's ``on_error`` (default ``451 4.3.0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.directory import DirectoryUnavailable, Question, ask, unavailable_verdict
from mailgate.plugin import hookimpl
from mailgate.session import Address, Session, Transaction
from mailgate.verdict import Verdict


@dataclass(slots=True)
class RecipientVerifySettings:
    """The keys of ``conf.d/NN-recipient_verify.toml``."""

    domains: list[str] = field(default_factory=list)
    """The local domains whose recipients are checked (required)."""
    subaddress_delimiter: str = "+"
    """``bob+tag`` exists when ``bob`` does; empty: no subaddresses."""
    reply_text: str = "Recipient address rejected: User unknown"
    """The refusal's text."""

    def __post_init__(self) -> None:
        if not self.domains:
            raise ValueError("domains: the local domains to verify are required")
        if len(self.subaddress_delimiter) > 1:
            raise ValueError("subaddress_delimiter must be one character or empty")


class RecipientVerify:
    """Refuses recipients of the local domains that the directory does not know."""

    Settings = RecipientVerifySettings
    reads: frozenset[str] = frozenset()

    def __init__(self, settings: RecipientVerifySettings) -> None:
        self.settings = settings
        self._domains = frozenset(d.lower().strip(".") for d in settings.domains)

    def _candidates(self, address: str) -> list[str]:
        local, _, domain = address.rpartition("@")
        delimiter = self.settings.subaddress_delimiter
        if delimiter and delimiter in local[1:]:
            return [address, f"{local.partition(delimiter)[0]}@{domain}"]
        return [address]

    @hookimpl
    async def on_rcpt(
        self, session: Session, transaction: Transaction, recipient: Address
    ) -> Verdict | None:
        """550 5.1.1 for a local recipient the directory says does not exist."""
        address = recipient.address
        if recipient.domain.lower().rstrip(".") not in self._domains:
            return None
        rewritten = transaction.notes.get("rewrite", {}).get("recipients", {})
        if address in rewritten:
            return None
        try:
            for candidate in self._candidates(address):
                entry = await ask(session, Question.RECIPIENT, candidate)
                if entry is None or entry.found:
                    return None
        except DirectoryUnavailable as exc:
            return unavailable_verdict(exc)
        return Verdict.reject(
            550, "5.1.1", self.settings.reply_text, reason=f"unknown recipient <{address}>"
        )
