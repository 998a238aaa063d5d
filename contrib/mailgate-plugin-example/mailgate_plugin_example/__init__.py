"""subject_tag: an example mailgate plugin that tags the Subject and refuses some recipients."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailgate import Address, Message, Session, Transaction, Verdict, hookimpl
from mailgate.config import Dynamic


@dataclass
class SubjectTagSettings:
    """The keys of the plugin's conf.d file, with their types and defaults."""

    tag: Dynamic[str] = field(default=Dynamic.fixed("[EXTERNAL]"))
    refuse_recipients: str = ""  # a regular expression; "" refuses none

    def __post_init__(self) -> None:  # a ValueError here is a configuration error
        try:
            re.compile(self.refuse_recipients)
        except re.error as exc:
            raise ValueError(f"refuse_recipients: a regular expression ({exc})") from None


class SubjectTag:
    Settings = SubjectTagSettings  # mailgate checks the conf.d file against it
    reads = frozenset({"headers"})  # on_message reads the Subject, not the body

    def __init__(self, settings: SubjectTagSettings) -> None:
        self.settings = settings
        pattern = settings.refuse_recipients
        self.refuse = re.compile(pattern) if pattern else None

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        if self.refuse is not None and self.refuse.search(recipient.address):
            return Verdict.reject(550, "5.7.1", "Recipient refused by policy")
        return None  # no opinion: the next plugin is asked

    @hookimpl
    def on_message(self, session: Session, transaction: Transaction, message: Message) -> None:
        tag = self.settings.tag.value(session, transaction)
        subject = message.get("Subject")
        if subject is None:
            transaction.add_header("Subject", tag)
        elif not subject.lstrip().startswith(tag):
            transaction.change_header("Subject", f"{tag} {subject.lstrip()}")
        transaction.set_result("subject_tag", "tagged", reason=tag)
