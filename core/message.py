"""The message as plugins see it: a header list and a body spooled to disk past a threshold."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

DEFAULT_SPOOL_THRESHOLD = 1 << 20
"""Bodies larger than this (bytes) live in a temporary file, not in memory."""

_COPY_CHUNK = 1 << 16


@dataclass(slots=True)
class Header:
    """One header field.

    `raw_value` is everything after the colon, as received: it keeps the leading space and any
    folding (CRLF followed by white space), so a relayed header is byte-for-byte what arrived and
    DKIM signatures survive. `value` is the same with the one leading space removed, which is
    what the milter protocol sends without SMFIP_HDR_LEADSPC.
    """

    name: str
    raw_value: str

    @classmethod
    def new(cls, name: str, value: str) -> Header:
        """A header created by a plugin: ``Header.new("X-Scanned", "yes")``."""
        return cls(name, " " + value if value and not value[0].isspace() else value)

    @property
    def value(self) -> str:
        """The value without its single leading space."""
        return self.raw_value[1:] if self.raw_value.startswith(" ") else self.raw_value

    def to_bytes(self) -> bytes:
        """The header as it goes on the wire, with its CRLF."""
        return f"{self.name}:{self.raw_value}\r\n".encode("utf-8", "surrogateescape")


def new_spool(threshold: int = DEFAULT_SPOOL_THRESHOLD, directory: str | None = None) -> IO[bytes]:
    """A binary file that stays in memory up to `threshold` bytes, then moves to an unnamed
    (already unlinked) file in `directory` (the system's temporary directory by default)."""
    return tempfile.SpooledTemporaryFile(max_size=threshold, mode="w+b", dir=directory or None)


class Message:
    """Headers and body of one message.

    The body is a binary file of CRLF-terminated lines (the SMTP wire form, without dot
    stuffing); read it with `iter_body()` or `open_body()`, never all at once: it may be 50 MiB.

    `withheld` names the parts (``"headers"``, ``"body"``) the ingress did not fetch because
    no enabled plugin declared it reads them (the milter listener only; see ``reads`` in
    `mailgate.hookspecs`): those parts are empty here, although the real message has them.
    """

    __slots__ = ("_body", "arrived_headers", "body_size", "headers", "withheld")

    def __init__(
        self,
        headers: list[Header],
        body: IO[bytes],
        body_size: int | None = None,
        *,
        withheld: frozenset[str] = frozenset(),
    ) -> None:
        self.headers = headers
        self.arrived_headers = tuple(headers)
        """The header fields as the message arrived, before any plugin changed them (plugins
        replace fields, never change one in place): what incoming DKIM and ARC signatures
        are checked against."""
        self.withheld = withheld
        self._body = body
        if body_size is None:
            body.seek(0, 2)
            body_size = body.tell()
        self.body_size = body_size

    # -- headers -------------------------------------------------------------------------------

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first header called `name` (case-insensitive), or `default`."""
        lname = name.lower()
        for h in self.headers:
            if h.name.lower() == lname:
                return h.value
        return default

    def get_all(self, name: str) -> list[str]:
        """The values of every header called `name`, in order."""
        lname = name.lower()
        return [h.value for h in self.headers if h.name.lower() == lname]

    def _position(self, name: str, occurrence: int) -> int | None:
        lname = name.lower()
        seen = 0
        for i, h in enumerate(self.headers):
            if h.name.lower() == lname:
                seen += 1
                if seen == occurrence:
                    return i
        return None

    def add_header(self, name: str, value: str) -> None:
        """Append a header (used by `Transaction.add_header`)."""
        self.headers.append(Header.new(name, value))

    def insert_header(self, index: int, name: str, value: str) -> None:
        """Insert a header before position `index`; past the end it appends."""
        self.headers.insert(max(0, min(index, len(self.headers))), Header.new(name, value))

    def change_header(self, name: str, occurrence: int, value: str) -> None:
        """Replace the value of the `occurrence`-th header `name`; append it if there is none."""
        pos = self._position(name, occurrence)
        if pos is None:
            self.add_header(name, value)
        else:
            self.headers[pos] = Header.new(self.headers[pos].name, value)

    def delete_header(self, name: str, occurrence: int) -> None:
        """Delete the `occurrence`-th header `name`; nothing happens if there is none."""
        pos = self._position(name, occurrence)
        if pos is not None:
            del self.headers[pos]

    # -- body ----------------------------------------------------------------------------------

    def open_body(self) -> IO[bytes]:
        """The body file, rewound. Do not close it; read it before the next `await` of yours."""
        self._body.seek(0)
        return self._body

    def iter_body(self, chunk_size: int = _COPY_CHUNK, *, start: int = 0) -> Iterator[bytes]:
        """The body from byte `start` on, in chunks of at most `chunk_size` bytes.

        Each iterator keeps its own position, so concurrent scanners that await between chunks
        may read the same spool at the same time.
        """
        f = self._body
        pos = start
        while True:
            f.seek(pos)
            chunk = f.read(chunk_size)
            if not chunk:
                return
            pos += len(chunk)
            yield chunk

    def replace_body(self, body: IO[bytes]) -> None:
        """Take `body` (a readable binary file) as the new body; the old one is closed."""
        old = self._body
        body.seek(0, 2)
        self.body_size = body.tell()
        self._body = body
        if old is not body:
            old.close()

    def header_bytes(self) -> bytes:
        """The header block as it goes on the wire, with the empty line that ends it."""
        return b"".join(h.to_bytes() for h in self.headers) + b"\r\n"

    def iter_bytes(self, chunk_size: int = _COPY_CHUNK) -> Iterator[bytes]:
        """The whole message, headers then body, in chunks: what the relay sends."""
        yield self.header_bytes()
        yield from self.iter_body(chunk_size)

    def as_bytes(self, *, arrived: bool = False) -> bytes:
        """The whole message in one piece, for a library that needs it so (dkimpy): the header
        fields as they are now, or (`arrived`) as they arrived; then the body."""
        headers = self.arrived_headers if arrived else self.headers
        head = b"".join(h.to_bytes() for h in headers) + b"\r\n"
        return head + b"".join(self.iter_body())

    @property
    def size(self) -> int:
        """The size of the message in bytes as it would be sent."""
        return len(self.header_bytes()) + self.body_size

    def copy_body_to(self, dest: IO[bytes]) -> None:
        """Copy the body into another binary file."""
        shutil.copyfileobj(self.open_body(), dest, _COPY_CHUNK)

    def close(self) -> None:
        """Release the body spool."""
        self._body.close()


def parse_header_block(block: bytes) -> list[Header]:
    """Split a raw header block (CRLF lines, without the blank line) into headers.

    Continuation lines stay in the value with their CRLF, so the header can be written back
    unchanged. A line that is neither a field nor a continuation ends up as its own header with
    an empty name; the SMTP ingress refuses such messages before they get here.
    """
    headers: list[Header] = []
    text = block.decode("utf-8", "surrogateescape")
    if not text:
        return headers
    if text.endswith("\r\n"):
        text = text[:-2]
    for line in text.split("\r\n"):
        if line[:1] in (" ", "\t") and headers:
            headers[-1].raw_value += "\r\n" + line
            continue
        name, sep, rest = line.partition(":")
        if not sep:
            headers.append(Header("", line))
        else:
            headers.append(Header(name, rest))
    return headers
