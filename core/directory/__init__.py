"""The directory: who exists, which senders a login may use, and a login's credentials.

Backends (``directory_sql``, ``directory_ldap``, or a third-party plugin) implement the
`directory` hook; the first answer that is not None wins. Plugins that need an answer
(recipient verification, ``sender_auth``, ``directory_auth``, ``rewrite``) call `ask`, which
runs the hook through the session's pipeline, with each backend's ``timeout`` and
``on_error``::

    entry = await ask(session, Question.RECIPIENT, "bob@example.org")
    if entry is not None and not entry.found:
        ...  # the directory knows this recipient does not exist

A backend that fails (raises, times out, is unreachable) ends the question: with
``on_error = "tempfail"`` (the default) or ``"reject"``, `ask` raises `DirectoryUnavailable`
carrying the verdict the client should get (``451 4.3.0`` or ``554 5.3.0``); with
``"accept"`` that backend is passed over as if it had no opinion.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mailgate.verdict import Verdict

if TYPE_CHECKING:
    from mailgate.session import Session


class Question(enum.StrEnum):
    """What the directory is asked; the subject is an address or a login."""

    RECIPIENT = "recipient"
    """Does this local address exist, and where does it deliver (`Entry.addresses`: the
    members of a list or the targets of an alias; empty when it is a mailbox itself)."""
    SENDERS = "senders"
    """Which addresses may this login use as its sender (`Entry.addresses`; an entry
    ``@example.org`` stands for every address of the domain)."""
    CREDENTIALS = "credentials"
    """What this login's credentials are (`Entry.credentials`)."""


class Credentials(Protocol):
    """A login's credentials as the directory holds them: a password hash, or a DN to bind as."""

    async def verify(self, secret: str) -> bool:
        """True if `secret` is this login's password."""
        ...


@dataclass(frozen=True, slots=True)
class Entry:
    """A directory's answer: found or not, with the addresses or credentials asked for."""

    found: bool
    addresses: tuple[str, ...] = ()
    credentials: Credentials | None = None


NOT_FOUND = Entry(False)
"""The directory knows the subject does not exist (cached for ``negative_ttl``)."""


class DirectoryUnavailable(Exception):
    """A backend failed and its ``on_error`` is ``tempfail`` or ``reject``: `verdict` is what
    the client gets."""

    def __init__(self, plugin: str, verdict: Verdict) -> None:
        super().__init__(f"directory {plugin} unavailable")
        self.plugin = plugin
        self.verdict = verdict


Lookup = Callable[["Session | None", Question, str], Awaitable[Entry | None]]
"""How `ask` reaches the backends: the session's `Pipeline.directory`."""

active_lookup: ContextVar[Lookup | None] = ContextVar("mailgate_directory", default=None)
"""Set by the pipeline for the session it runs hooks for (None: no pipeline, no directory)."""


async def ask(session: Session | None, question: Question, subject: str) -> Entry | None:
    """The first backend's answer about `subject`; None when no backend has an opinion (or
    there is no backend). Raises `DirectoryUnavailable` (see the module docstring)."""
    lookup = active_lookup.get()
    if lookup is None:
        return None
    return await lookup(session, question, subject)


def unavailable_verdict(exc: DirectoryUnavailable) -> Verdict:
    """The verdict for a dead directory, with the reason naming the backend."""
    return Verdict(
        kind=exc.verdict.kind,
        code=exc.verdict.code,
        status=exc.verdict.status,
        text=exc.verdict.text,
        reason=f"directory {exc.plugin} unavailable",
    )
