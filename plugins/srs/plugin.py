"""The `srs` plugin: SRS senders for forwarded mail, and bounces to them reversed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.logging import get_logger
from mailgate.plugins.rewrite.lookup import with_orcpt
from mailgate.plugins.srs.codec import SrsError, is_srs
from mailgate.plugins.srs.settings import SrsSettings

log = get_logger("mailgate.plugins.srs")

NOTE = "srs"
"""``transaction.notes["srs"]``: ``{"sender": [old, new] or None, "recipients": {srs: orig}}``."""


class Srs:
    """Forward: at the end of data, a sender outside our domains, on mail for some recipient outside
    `local_domains`, becomes an SRS address in `domain` (if `forward_when` says so).
    Reverse: at RCPT, a recipient ``SRS0=...@domain``/``SRS1=...@domain`` is checked and
    replaced by the address it stands for, or refused with ``550 5.1.1``.
    """

    Settings = SrsSettings
    reads: frozenset[str] = frozenset()

    def __init__(self, settings: SrsSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.codec = settings.srs
        self.clock = clock
        self.local = {d.rstrip(".").lower() for d in settings.local_domains} | {self.codec.domain}
        self.excluded = {d.rstrip(".").lower() for d in settings.exclude_sender_domains}
        self.excluded.add(self.codec.domain)

    @hookimpl
    def on_rcpt(self, transaction: Transaction, recipient: Address) -> Verdict | None:
        """Reverse an SRS recipient in our SRS domain; refuse one that does not check out."""
        if not self.settings.reverse or recipient.domain.rstrip(".") != self.codec.domain:
            return None
        if not is_srs(recipient.local_part):
            return None
        try:
            original = self.codec.reverse(recipient.address, self.clock())
        except SrsError as exc:
            log.info("SRS address refused", rcpt=recipient.address, reason=str(exc))
            return Verdict.reject(550, "5.1.1", f"Invalid SRS address: {exc}")
        _notes(transaction)["recipients"][recipient.address] = original
        transaction.delete_recipient(recipient.address)
        transaction.add_recipient(original, with_orcpt(recipient.params, recipient.address))
        return None

    @hookimpl
    def on_message(self, session: Session, transaction: Transaction) -> None:
        """Give the sender an SRS address if the mail leaves for another domain.

        At the end of data, not at DATA: the recipients are final either way, and a Postfix
        speaking milter protocol 2 sends no DATA step. Reads nothing of the message.
        """
        sender = transaction.sender
        if not self.settings.forward or not self._leaves(transaction) or not sender.address:
            return
        if sender.domain.rstrip(".") in self.excluded:
            return
        if not self.settings.forward_when(session, transaction):
            return
        if self._ours(sender.address):
            return
        try:
            new = self.codec.forward(sender.address, self.clock())
        except SrsError as exc:
            log.warning("SRS forward failed, sender kept", sender=sender.address, error=str(exc))
            return
        if new != sender.address:
            _notes(transaction)["sender"] = [sender.address, new]
            transaction.change_sender(new, tuple(sender.params))

    def _ours(self, address: str) -> bool:
        """True for an SRS address our secrets verify, wherever it points (as postsrsd, which
        answers "Already rewritten"): wrapping it again would only lengthen it."""
        if not is_srs(address.rpartition("@")[0]):
            return False
        try:
            self.codec.reverse(address, self.clock())
        except SrsError:
            return False
        return True

    def _leaves(self, transaction: Transaction) -> bool:
        return any(r.domain.rstrip(".") not in self.local for r in transaction.recipients)


def _notes(transaction: Transaction) -> dict[str, Any]:
    notes: dict[str, Any] = transaction.notes.setdefault(NOTE, {"sender": None, "recipients": {}})
    return notes
