"""The `rewrite` plugin's use of the directory: aliases and lists, and known recipients.

A recipient that the recipient map does not list is looked up in the directory: an alias or
a list (an entry with addresses) becomes its addresses; a mailbox the directory knows is not
caught by the catch-all. Otherwise the rules, the catch-all and stripping apply as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailgate import Address, Session, Transaction, Verdict
from mailgate.directory import DirectoryUnavailable, Question, ask, unavailable_verdict
from mailgate.plugins.rewrite.rule_expressions import Facts

if TYPE_CHECKING:
    from mailgate.plugins.rewrite.plugin import Rewrite


async def rcpt_with_directory(
    plugin: Rewrite, session: Session, transaction: Transaction, recipient: Address
) -> Verdict | None:
    """`Rewrite.on_rcpt` with the directory asked first (for addresses the map lacks)."""
    address = recipient.address
    rewriter = plugin.rewriter
    known = False
    facts = Facts(session, transaction)
    if rewriter.recipients(facts).find(address) is None:
        try:
            entry = await ask(session, Question.RECIPIENT, address)
        except DirectoryUnavailable as exc:
            return unavailable_verdict(exc)
        if entry is not None and entry.found and entry.addresses:
            plugin.replace_recipient(transaction, recipient, list(entry.addresses))
            return None
        known = entry is not None and entry.found
    targets = rewriter.recipient(address, facts, known=known)
    plugin.replace_recipient(transaction, recipient, targets)
    return None
