"""Add a header to every message: the smallest useful plugin, and an example to copy.

``conf.d/20-add_header.toml``::

    name = "X-Mailgate"
    value = "passed"
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.config import Dynamic
from mailgate.plugin import hookimpl
from mailgate.session import Session, Transaction


@dataclass(slots=True)
class AddHeaderSettings:
    """Settings of the ``add_header`` plugin."""

    name: str = "X-Mailgate"
    """The header's name."""
    value: Dynamic[str] = field(default=Dynamic.fixed("passed"))
    """The header's value; may depend on the transaction (``[{ if = ..., then = ... }, ...]``)."""


class AddHeader:
    """Appends the header `name: value` to each message at the end of data."""

    Settings = AddHeaderSettings
    reads: frozenset[str] = frozenset()
    """It only adds: the milter listener need not ask the MTA for the headers and body."""

    def __init__(self, settings: AddHeaderSettings | None = None) -> None:
        self.settings = settings or AddHeaderSettings()

    @hookimpl
    def on_message(self, session: Session, transaction: Transaction) -> None:
        """Add the header (its value computed for this session and transaction)."""
        transaction.add_header(self.settings.name, self.settings.value.value(session, transaction))
