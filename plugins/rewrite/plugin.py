"""The `rewrite` plugin: envelope sender and recipient rewriting, subaddresses, catch-all."""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import Any, TypeVar

from mailgate import Address, Message, Session, Transaction, Verdict, hookimpl
from mailgate.config import Dynamic
from mailgate.directory import active_lookup
from mailgate.plugins.rewrite.directory import rcpt_with_directory
from mailgate.plugins.rewrite.headers import rewrite_header_value
from mailgate.plugins.rewrite.lookup import AddressMap, CatchAll, Lookup, rewrite, with_orcpt
from mailgate.plugins.rewrite.rule_expressions import BARE, Facts
from mailgate.plugins.rewrite.rules import RuleList
from mailgate.plugins.rewrite.settings import RewriteSettings

NOTE = "rewrite"
"""``transaction.notes["rewrite"]``: what this plugin changed (see `Rewrite`)."""

T = TypeVar("T")

SENDER_HEADERS = ("From",)
RECIPIENT_HEADERS = ("To", "Cc")


class Rewriter:
    """The lookups of one configuration: what a sender or a recipient becomes."""

    def __init__(self, settings: RewriteSettings) -> None:
        lookup = Lookup(settings.subaddress_delimiter, settings.case_insensitive_local)
        self.map_headers = settings.rewrite_headers
        self.strip = settings.strip_subaddress
        known = frozenset(
            lookup.key(a) for a in [*settings.known_recipients, *settings.known_from_file]
        )
        self._senders = settings.sender.map(lambda table: AddressMap(table, lookup))
        self._recipients = settings.recipients.map(lambda table: AddressMap(table, lookup))
        self._catch_all = settings.catch_all.map(
            lambda table: CatchAll(AddressMap(table, lookup), known)
        )
        self.sender_rules = RuleList([r.rule for r in settings.sender_rules], "sender")
        self.recipient_rules = RuleList([r.rule for r in settings.recipient_rules], "recipient")

    def senders(self, facts: Facts = BARE) -> AddressMap:
        """The sender map of this transaction (`sender` may have rules)."""
        return _pick(self._senders, facts)

    def recipients(self, facts: Facts = BARE) -> AddressMap:
        """The recipient map of this transaction and recipient."""
        return _pick(self._recipients, facts)

    def catch_all(self, facts: Facts = BARE) -> CatchAll:
        """The catch-all of this transaction and recipient."""
        return _pick(self._catch_all, facts)

    def sender(self, address: str, facts: Facts = BARE) -> str | None:
        """The new envelope sender, or None to keep it (the null sender is never rewritten).

        The sender map first; for an address it does not list, the sender rules.
        """
        if not address:
            return None
        result = rewrite(address, self.senders(facts), strip=False)
        if result is None and self.sender_rules:
            result = [self.sender_rules.apply(address, facts).address]
        return None if result is None or result == [address] else result[0]

    def recipient(
        self, address: str, facts: Facts = BARE, *, known: bool = False
    ) -> list[str] | None:
        """What one recipient becomes (one or more addresses), or None to keep it.

        The recipient map first; then, for an address it does not list, the recipient rules;
        if none matched, the catch-all of its domain (unless it is a known recipient); then
        subaddress stripping. A `known` address (the directory has it) skips the catch-all.
        """
        recipients = self.recipients(facts)
        if recipients.find(address) is None:
            if self.recipient_rules:
                outcome = self.recipient_rules.apply(address, facts)
                if outcome.matched:
                    return None if outcome.address == address else [outcome.address]
            catch = None if known else self.catch_all(facts).target(address)
            if catch is not None:
                return None if catch == address else [catch]
        result = rewrite(address, recipients, strip=self.strip)
        return None if result is None or result == [address] else result

    def header_sender(self, address: str, facts: Facts = BARE) -> str | None:
        """The new address for From:: by the sender map (with ``rewrite_headers``), else by
        the sender rules marked ``headers``."""
        result = rewrite(address, self.senders(facts), strip=False) if self.map_headers else None
        if result is None:
            result = [self.sender_rules.apply(address, facts, headers_only=True).address]
        return None if result == [address] else result[0]

    def header_recipient(self, address: str, facts: Facts = BARE) -> str | None:
        """The new address for To:/Cc:: one-to-one recipient entries (with
        ``rewrite_headers``; no stripping), else the recipient rules marked ``headers``."""
        result = rewrite(address, self.recipients(facts), strip=False) if self.map_headers else None
        if result is None:
            result = [self.recipient_rules.apply(address, facts, headers_only=True).address]
        return result[0] if len(result) == 1 and result != [address] else None


class Rewrite:
    """Rewrite the envelope sender at MAIL and each recipient at RCPT; refuse nothing.

    A rewritten recipient is deleted and its new addresses added with its ESMTP parameters
    (``ORCPT=rfc822;<original>`` added when the client gave none). The changes are recorded
    in ``transaction.notes["rewrite"]``: ``{"sender": [old, new], "recipients": {old: [new,
    ...]}}``.

    With ``rewrite_headers = true`` the instance is a `HeaderRewrite`, which also has
    ``on_message``; ``reads`` (the headers) only counts for a plugin with that hook, so the
    envelope-only plugin makes the milter listener ask the MTA for nothing.
    """

    Settings = RewriteSettings
    reads: frozenset[str] = frozenset({"headers"})
    """What ``on_message`` reads; only `HeaderRewrite` has one (``rewrite_headers = true``)."""

    def __new__(cls, settings: RewriteSettings | None = None) -> Rewrite:
        if (
            cls is Rewrite
            and settings is not None
            and (settings.rewrite_headers or settings.header_rules)
        ):
            cls = HeaderRewrite
        return super().__new__(cls)

    def __init__(self, settings: RewriteSettings | None = None) -> None:
        self.settings = settings or RewriteSettings()
        self.rewriter = Rewriter(self.settings)

    @hookimpl
    def on_mail(self, session: Session, transaction: Transaction, sender: Address) -> None:
        """Rewrite the envelope sender, keeping its ESMTP parameters."""
        new = self.rewriter.sender(sender.address, Facts(session, transaction))
        if new is not None:
            _notes(transaction)["sender"] = [sender.address, new]
            transaction.change_sender(new, tuple(sender.params))

    @hookimpl
    def on_rcpt(
        self, session: Session, transaction: Transaction, recipient: Address
    ) -> Awaitable[Verdict | None] | None:
        """Replace the recipient by what the maps, the directory's aliases (``use_directory``),
        the rules, the catch-all or stripping make of it."""
        if self.settings.use_directory and active_lookup.get() is not None:
            return rcpt_with_directory(self, session, transaction, recipient)
        targets = self.rewriter.recipient(recipient.address, Facts(session, transaction))
        self.replace_recipient(transaction, recipient, targets)
        return None

    def replace_recipient(
        self, transaction: Transaction, recipient: Address, targets: list[str] | None
    ) -> None:
        """Put `targets` in the place of `recipient` (None: keep it), recording the change."""
        original = recipient.address
        if targets is None:
            return
        notes = _notes(transaction)
        notes["recipients"][original] = targets
        params = with_orcpt(recipient.params, original)
        keep = any(t.lower() == original.lower() for t in targets)
        if not keep:
            self._delete(transaction, original)
        for target in targets:
            if target.lower() != original.lower():
                transaction.add_recipient(target, params)
                notes["added"].append((target, params))

    @staticmethod
    def _delete(transaction: Transaction, address: str) -> None:
        """Delete `address`, then add back the copies of it this plugin added for others."""
        transaction.delete_recipient(address)
        notes = _notes(transaction)
        for target, params in notes["added"]:
            if target.lower() == address.lower():
                transaction.add_recipient(target, params)


class HeaderRewrite(Rewrite):
    """`Rewrite` with ``rewrite_headers = true`` or a rule with ``headers = true``: From:, To:
    and Cc: too, at the end of data."""

    @hookimpl
    def on_message(self, session: Session, transaction: Transaction, message: Message) -> None:
        """Rewrite the header addresses that the maps list or the header rules match."""
        facts = Facts(session, transaction)
        for names, fn in (
            (SENDER_HEADERS, self.rewriter.header_sender),
            (RECIPIENT_HEADERS, self.rewriter.header_recipient),
        ):
            for name in names:
                for i, value in enumerate(message.get_all(name), 1):
                    new = rewrite_header_value(value, functools.partial(fn, facts=facts))
                    if new != value:
                        transaction.change_header(name, new, i)


def _pick(setting: Dynamic[T], facts: Facts) -> T:
    """The value of a per-transaction map: the fixed one at no cost, else by its rules."""
    if setting.is_fixed:
        return setting.default
    return setting.value(facts.session, facts.transaction)


def _notes(transaction: Transaction) -> dict[str, Any]:
    notes: dict[str, Any] = transaction.notes.setdefault(
        NOTE, {"sender": None, "recipients": {}, "added": []}
    )
    return notes
