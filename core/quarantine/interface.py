"""What the flow needs of a quarantine, whichever backend keeps the messages."""

from __future__ import annotations

from typing import Protocol

from mailgate.session import Session, Transaction


class Held(Protocol):
    """A message just held: its id, which the client's ``250 ... held as ID`` names."""

    @property
    def id(self) -> str: ...


class Quarantine(Protocol):
    """Keeps held messages. `store` raises `OSError` (or the store's error) when it cannot:
    the client then gets a 4xx and keeps the message."""

    async def store(
        self, session: Session, transaction: Transaction, reason: str, plugin: str = ""
    ) -> Held: ...
