"""subject_tag: an example third-party mailgate plugin.

Puts `tag` in front of each message's Subject (once: an already tagged Subject is left alone)
and refuses recipients matching `refuse_recipients` at RCPT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailgate import Address, Message, Session, Transaction, Verdict, hookimpl
from mailgate.config import Dynamic


@dataclass
class SubjectTagSettings:
    """The plugin's keys in its ``conf.d`` file."""

    tag: Dynamic[str] = field(default=Dynamic.fixed("[EXTERNAL]"))
    """Put in front of the Subject; may depend on the transaction (if/then/else rules)."""
    refuse_recipients: str = ""
    """A regular expression; matching recipients get 550 5.7.1 at RCPT ("" refuses none)."""

    def __post_init__(self) -> None:
        re.compile(self.refuse_recipients)


class SubjectTag:
    """Tags subjects and refuses some recipients (see the module docstring)."""

    Settings = SubjectTagSettings
    reads = frozenset({"headers"})
    """on_message reads the Subject, never the body (a milter need not be sent the body)."""

    def __init__(self, settings: SubjectTagSettings) -> None:
        self.settings = settings
        self._refuse = (
            re.compile(settings.refuse_recipients) if settings.refuse_recipients else None
        )

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        """Refuse recipients matching `refuse_recipients`."""
        if self._refuse is not None and self._refuse.search(recipient.address):
            return Verdict.reject(550, "5.7.1", "Recipient refused by policy")
        return None

    @hookimpl
    def on_message(self, session: Session, transaction: Transaction, message: Message) -> None:
        """Prefix the Subject with the tag (add a Subject if there is none)."""
        tag = self.settings.tag.value(session, transaction)
        subject = message.get("Subject")
        if subject is None:
            transaction.add_header("Subject", tag)
        elif not subject.lstrip().startswith(tag):
            transaction.change_header("Subject", f"{tag} {subject.lstrip()}")
        transaction.set_result("subject_tag", "tagged", reason=tag)
