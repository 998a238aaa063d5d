"""`Session` (one connection) and `Transaction` (one message), the records every hook sees."""

from __future__ import annotations

import contextvars
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import IO, Any

from mailgate import modifications as m
from mailgate.message import Message

_ids = itertools.count(1)
_pid_prefix = f"{os.getpid():x}"

pending_modifications: contextvars.ContextVar[list[m.Modification] | None] = contextvars.ContextVar(
    "pending_modifications", default=None
)
"""Set by the dispatcher while plugins run concurrently: their changes are collected here and
applied afterwards in `conf.d` order, so the result does not depend on which scan ended first."""


def new_id(prefix: str) -> str:
    """A short id, unique within this host's lifetime, for logs: ``s1a2b-7``."""
    return f"{prefix}{_pid_prefix}-{next(_ids)}"


@dataclass(slots=True)
class Address:
    """An envelope address with its ESMTP parameters.

    `address` is what was between the angle brackets (empty for the null sender ``<>``);
    `params` are the ESMTP parameters as given (``SIZE=1000``, ``NOTIFY=NEVER``).
    """

    address: str
    params: list[str] = field(default_factory=list)

    @property
    def local_part(self) -> str:
        """The part before the last ``@`` (the whole address if it has none)."""
        return self.address.rpartition("@")[0] if "@" in self.address else self.address

    @property
    def domain(self) -> str:
        """The domain after the last ``@``, lower-cased; empty for ``<>`` and bare names."""
        return self.address.rpartition("@")[2].lower() if "@" in self.address else ""

    def __str__(self) -> str:
        return self.address


@dataclass(slots=True)
class PluginResult:
    """What one plugin found, for other plugins, the log and Authentication-Results.

    `result` is a short word (``pass``, ``fail``, ``found``, ``clean``, ``skipped``, ...);
    `score` and `reason` are optional; `details` holds anything else worth keeping.
    """

    result: str
    score: float | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Session:
    """One client connection, from connect to disconnect.

    Ingress modules fill the connection facts; plugins read them and share findings in `notes`.
    `listener` is the name of the listener the client came in on.
    """

    client_ip: str
    client_port: int = 0
    client_name: str = ""
    listener: str = "smtp"
    ingress: str = "smtp"
    helo: str = ""
    tls: bool = False
    tls_version: str = ""
    tls_cipher: str = ""
    auth_login: str = ""
    id: str = field(default_factory=lambda: new_id("s"))
    started: float = field(default_factory=time.monotonic)
    notes: dict[str, Any] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to a session counter (``messages``, ``rejected``, ``errors``, ...)."""
        self.counters[name] = self.counters.get(name, 0) + n


@dataclass(slots=True)
class Transaction:
    """One message, from MAIL FROM to the end of data.

    `recipients` are the accepted ones, in order. `message` is set at the end of data.
    `modifications` is the list of every change plugins made, in the order they were made; the
    egress or the milter listener turns it into what it sends on.
    """

    sender: Address
    recipients: list[Address] = field(default_factory=list)
    id: str = field(default_factory=lambda: new_id("t"))
    queue_id: str = ""
    message: Message | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    results: dict[str, PluginResult] = field(default_factory=dict)
    modifications: list[m.Modification] = field(default_factory=list)

    # -- results -------------------------------------------------------------------------------

    def set_result(
        self,
        plugin: str,
        result: str,
        *,
        score: float | None = None,
        reason: str = "",
        **details: Any,
    ) -> None:
        """Record what `plugin` found: ``tx.set_result("clamav", "found", reason=name)``."""
        self.results[plugin] = PluginResult(result, score, reason, dict(details))

    # -- modifications -------------------------------------------------------------------------

    def add_header(self, name: str, value: str) -> None:
        """Append a header to the message."""
        self._modify(m.AddHeader(name, value))

    def insert_header(self, index: int, name: str, value: str) -> None:
        """Insert a header before the header at `index` (0: at the top)."""
        self._modify(m.InsertHeader(index, name, value))

    def change_header(self, name: str, value: str, occurrence: int = 1) -> None:
        """Replace the value of the `occurrence`-th header `name` (1-based)."""
        self._modify(m.ChangeHeader(name, occurrence, value))

    def delete_header(self, name: str, occurrence: int = 1) -> None:
        """Delete the `occurrence`-th header `name` (1-based)."""
        self._modify(m.DeleteHeader(name, occurrence))

    def replace_body(self, body: IO[bytes]) -> None:
        """Replace the body with the contents of a binary file (CRLF line endings)."""
        self._modify(m.ReplaceBody(body))

    def add_recipient(self, address: str, params: tuple[str, ...] = ()) -> None:
        """Add an envelope recipient."""
        self._modify(m.AddRecipient(address, tuple(params)))

    def delete_recipient(self, address: str) -> None:
        """Remove an envelope recipient."""
        self._modify(m.DeleteRecipient(address))

    def change_sender(self, address: str, params: tuple[str, ...] = ()) -> None:
        """Replace the envelope sender."""
        self._modify(m.ChangeSender(address, tuple(params)))

    def quarantine(self, reason: str) -> None:
        """Ask for the message to be held instead of delivered."""
        self._modify(m.Quarantine(reason))

    def _modify(self, mod: m.Modification) -> None:
        pending = pending_modifications.get()
        if pending is not None:
            pending.append(mod)
        else:
            self.apply(mod)

    def deletes_since(self, since: int, address: str) -> bool:
        """True if one of the modifications after the first `since` deletes `address`.

        The listeners ask this after `on_rcpt`: a recipient a plugin deleted there (rewrote
        into others) does not join the transaction and is not offered downstream.
        """
        key = address.lower()
        return any(
            isinstance(mod, m.DeleteRecipient) and mod.address.lower() == key
            for mod in self.modifications[since:]
        )

    def apply(self, mod: m.Modification) -> None:
        """Record `mod` and apply it to the envelope and message at once.

        Later plugins see the message as earlier ones left it.
        """
        self.modifications.append(mod)
        msg = self.message
        match mod:
            case m.AddRecipient(address, params):
                self.recipients.append(Address(address, list(params)))
            case m.DeleteRecipient(address):
                key = address.lower()
                self.recipients = [r for r in self.recipients if r.address.lower() != key]
            case m.ChangeSender(address, params):
                self.sender = Address(address, list(params))
            case m.Quarantine():
                pass
            case _ if msg is None:
                raise RuntimeError(f"{type(mod).__name__} needs the message (end of data)")
            case m.AddHeader(name, value):
                msg.add_header(name, value)
            case m.InsertHeader(index, name, value):
                msg.insert_header(index, name, value)
            case m.ChangeHeader(name, occurrence, value):
                msg.change_header(name, occurrence, value)
            case m.DeleteHeader(name, occurrence):
                msg.delete_header(name, occurrence)
            case m.ReplaceBody(body):
                msg.replace_body(body)

    @property
    def quarantined(self) -> str | None:
        """The reason of the last quarantine request, or None."""
        for mod in reversed(self.modifications):
            if isinstance(mod, m.Quarantine):
                return mod.reason
        return None
