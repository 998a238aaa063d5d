"""The modification vocabulary: the milter action set, as records.

A plugin changes a message only through the `Transaction` methods that create these
records. The same list serves three uses: the SMTP egress applies them to the message it relays
or queues, the milter listener sends them back to the MTA as milter replies, and the milter
bridge turns an external milter's replies into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO


@dataclass(frozen=True, slots=True)
class AddHeader:
    """Append a header at the end of the header block (milter SMFIR_ADDHEADER)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    """Insert a header before the header at `index`, 0 being the first (SMFIR_INSHEADER)."""

    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """Replace the value of the `occurrence`-th (1-based) header called `name` (SMFIR_CHGHEADER).

    A missing occurrence appends the header, as Postfix does.
    """

    name: str
    occurrence: int
    value: str


@dataclass(frozen=True, slots=True)
class DeleteHeader:
    """Delete the `occurrence`-th (1-based) header called `name` (SMFIR_CHGHEADER, empty value)."""

    name: str
    occurrence: int


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    """Replace the whole body (SMFIR_REPLBODY). `body` is a readable binary file, CRLF lines."""

    body: IO[bytes]


@dataclass(frozen=True, slots=True)
class AddRecipient:
    """Add an envelope recipient, with optional ESMTP parameters (SMFIR_ADDRCPT / ADDRCPT_PAR)."""

    address: str
    params: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    """Remove an envelope recipient (SMFIR_DELRCPT)."""

    address: str


@dataclass(frozen=True, slots=True)
class ChangeSender:
    """Replace the envelope sender, with optional ESMTP parameters (SMFIR_CHGFROM)."""

    address: str
    params: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Hold the message for an administrator (SMFIR_QUARANTINE)."""

    reason: str


Modification = (
    AddHeader
    | InsertHeader
    | ChangeHeader
    | DeleteHeader
    | ReplaceBody
    | AddRecipient
    | DeleteRecipient
    | ChangeSender
    | Quarantine
)
"""Any one of the records above."""
