"""Inbound BDAT (RFC 3030 CHUNKING): the command's argument and one message's chunks so far.

The session (`mailgate.smtp.connection`) reads each chunk's bytes and answers; this module
holds what does not depend on the connection: parsing ``BDAT size [LAST]`` and the state of
a message arriving in chunks (its reader, whether ``on_headers`` ran, the bytes announced).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.egress import Reply
from mailgate.message import Header
from mailgate.session import Transaction
from mailgate.smtp.data import DataReader
from mailgate.syntax import ascii_number
from mailgate.verdict import Verdict

SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT size [LAST], closing connection")
"""A BDAT whose size cannot be read: where its data ends is unknown, so the session ends."""
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT in one transaction")


def parse_bdat(arg: str) -> tuple[int, bool] | None:
    """``BDAT``'s argument as (chunk size, last); None if malformed. The size is 1 to 20
    ASCII digits; ``LAST`` is the only word allowed after it (any case)."""
    words = arg.split(" ")
    if not 1 <= len(words) <= 2:
        return None
    size = ascii_number(words[0])
    if size is None:
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return size, len(words) == 2


def chunk_accepted(size: int, total: int) -> Reply:
    """The ``250`` for a chunk that is not the last one."""
    return Reply(250, "2.0.0", f"Ok: {size} bytes, {total} in all")


@dataclass(slots=True)
class ChunkedMessage:
    """One message arriving in BDAT chunks, in transaction `tx`.

    `reader` checks and spools the bytes (as for DATA, without dot-stuffing); `announced` is
    the sum of the chunk sizes so far, checked against the size limit before a chunk is read;
    `headers` and `header_verdict` are set once the header block is in and ``on_headers``
    has run.
    """

    tx: Transaction
    reader: DataReader
    max_size: int
    """The transaction's `max_message_size`, read when its first chunk came."""
    announced: int = 0
    headers: list[Header] | None = None
    header_verdict: Verdict | None = None

    def close(self) -> None:
        """Release the spool (the message was refused or its transaction ended)."""
        self.reader.close()
