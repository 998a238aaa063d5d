"""The DATA reader: ends data on CRLF.CRLF only, undoes dot-stuffing, and spools the message.

The same reader takes the raw bytes of BDAT chunks (RFC 3030: no dot-stuffing, no end marker;
the BDAT command counts the bytes): `feed_raw` for each piece, `end_raw` after the last chunk.
Every check below applies to both.

It works on whole chunks with bytes methods (find, count, replace), never line by line in
Python: a chunk is cut after its last LF, and the complete lines before the cut are checked and
stored in one go; the partial line after it waits for the next chunk. It does no I/O, so the
SMTP session feeds it what it reads and tests feed it any split of a stream.

Problems (a NUL, a bare LF or CR, a long line, too many bytes) do not stop the reading: the
reader goes on to the real end of data, so commands smuggled after a fake end are read as
content and never run. Which problem is reported does not depend on how the stream was split:
the checks that are cheap run over every byte, and the most serious problem found wins.
"""

from __future__ import annotations

import enum
import re
from typing import IO

from mailgate.message import Header, new_spool, parse_header_block

END_OF_DATA = b"\r\n.\r\n"

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
"""A header field line: printable ASCII name without a colon (RFC 5322 section 3.6.8)."""

_KEEP_AFTER_OVERFLOW = 4


class DataProblem(enum.IntEnum):
    """Why a message is refused, most serious first (a lower value wins)."""

    NUL = 1
    BARE_LINE_ENDING = 2
    LINE_TOO_LONG = 3
    TOO_BIG = 4
    HEADER_TOO_BIG = 5
    NO_SPACE = 6
    """The spool could not be written (disk full): a temporary failure, not the client's."""


class DataReader:
    """Reads the DATA of one message from the bytes that follow the 354 reply.

    Call `feed` with each chunk read from the client until it returns the number of bytes of
    that chunk that belonged to the data (what follows is the client's next command). Then
    `problem` says whether the message is refused; if not, `header_block`, `headers` and
    `body` hold it. `headers_complete` turns true as soon as the header block has arrived.
    """

    def __init__(
        self,
        *,
        max_line_length: int = 1000,
        max_header_size: int = 100 * 1024,
        max_size: int = 50 * 1024 * 1024,
        normalize_bare_line_endings: bool = False,
        spool_threshold: int = 1 << 20,
        spool_directory: str | None = None,
        dot_stuffed: bool = True,
    ) -> None:
        self._stuffed = dot_stuffed
        # A dot-stuffed line is one byte longer on the wire than the line it carries.
        self._window = max_line_length + 1
        self._max_header = max_header_size
        self._max_size = max_size
        self._normalize = normalize_bare_line_endings
        self._pending = b""
        self._crlf_before = True
        self._problems: set[DataProblem] = set()
        self._head = bytearray()
        self._head_pos = 0
        self._body: IO[bytes] = new_spool(spool_threshold, spool_directory)
        self.size = 0
        """Bytes of data received so far, as sent (dot-stuffed), without the final ``.CRLF``
        (with BDAT: the bytes of the chunks checked so far)."""
        self.done = False
        """True once the end of data was read."""
        self.headers_complete = False
        """True once the header block has arrived (it may be empty)."""
        self.header_block = b""
        """The raw header lines, CRLF-terminated, without the empty line that ends them."""
        self.blank_line = False
        """True if an empty line ended the header block; false if the body began with a line
        that is not a header field, or there was no body at all."""

    # -- feeding ---------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> int:
        """Take the next chunk; return how many of its bytes were data, or -1 for "need more".

        A non-negative result means the end of data was in this chunk; the bytes after it are
        the client's next commands (pipelined, or smuggled).
        """
        if self.done:
            raise RuntimeError("the end of data was already read")
        pending = self._pending
        buf = pending + chunk if pending else chunk
        if self._crlf_before and buf.startswith(b".\r\n"):
            return self._finish(buf, 0, 3, len(pending))
        end = buf.find(END_OF_DATA)
        if end >= 0:
            return self._finish(buf, end + 2, end + 5, len(pending))
        cut = buf.rfind(b"\n") + 1
        if cut:
            self._lines(buf[:cut] if cut < len(buf) else buf)
            self._crlf_before = buf.endswith(b"\r\n", 0, cut)
            buf = buf[cut:]
        if len(buf) >= self._window:
            buf = self._overflow(buf)
        self._pending = buf
        return -1

    def feed_raw(self, data: bytes) -> None:
        """Take the next bytes of a BDAT chunk (any split: a line may span chunks)."""
        if self.done:
            raise RuntimeError("the last chunk was already read")
        pending = self._pending
        buf = pending + data if pending else data
        cut = buf.rfind(b"\n") + 1
        if cut:
            self._lines(buf[:cut] if cut < len(buf) else buf)
            buf = buf[cut:]
        if len(buf) >= self._window:
            buf = self._overflow(buf)
        self._pending = buf

    def end_raw(self) -> None:
        """The last BDAT chunk is in. A message that does not end with CRLF gets one (as
        Postfix does: DATA downstream could not carry it otherwise)."""
        if self.done:
            raise RuntimeError("the last chunk was already read")
        if self._pending:
            self._lines(self._pending + b"\r\n")
            self._pending = b""
        self.done = True
        if not self._problems and not self.headers_complete:
            self._end_headers(len(self._head), len(self._head), blank_line=False)

    def _finish(self, buf: bytes, content_end: int, data_end: int, pending: int) -> int:
        if content_end:
            self._lines(buf[:content_end])
        self._pending = b""
        self.done = True
        if not self._problems and not self.headers_complete:
            self._end_headers(len(self._head), len(self._head), blank_line=False)
        return data_end - pending

    def _overflow(self, partial: bytes) -> bytes:
        """A line longer than the limit has no end yet: note it, keep only its tail."""
        self._problems.add(DataProblem.LINE_TOO_LONG)
        dropped = partial[:-_KEEP_AFTER_OVERFLOW]
        self.size += len(dropped)
        if b"\0" in dropped:
            self._problems.add(DataProblem.NUL)
        # The dropped part holds no LF, so every CR in it is a bare one.
        if b"\r" in dropped and not self._normalize:
            self._problems.add(DataProblem.BARE_LINE_ENDING)
        self._crlf_before = False
        return partial[-_KEEP_AFTER_OVERFLOW:]

    def _lines(self, lines: bytes) -> None:
        """Check and store complete lines (`lines` ends with LF and starts a line)."""
        self.size += len(lines)
        problems = self._problems
        if b"\0" in lines:
            problems.add(DataProblem.NUL)
        # Without bare ones, CR and LF come only in pairs: one count and one C-level delete.
        bare = len(lines) - len(lines.translate(None, b"\r\n")) != 2 * lines.count(b"\r\n")
        if bare and not self._normalize:
            problems.add(DataProblem.BARE_LINE_ENDING)
        if self._has_long_line(lines):
            problems.add(DataProblem.LINE_TOO_LONG)
        if self.size > self._max_size:
            problems.add(DataProblem.TOO_BIG)
        if problems:
            return
        if bare:
            lines = lines.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if self._stuffed:
            if lines[:1] == b".":
                lines = lines[1:]
            if b"\r\n." in lines:
                lines = lines.replace(b"\r\n.", b"\r\n")
        if self.headers_complete:
            self._store(lines)
        else:
            self._head += lines
            self._scan_headers()

    def _has_long_line(self, lines: bytes) -> bool:
        # Jump from line start to the last LF within one line's worth of bytes: about one
        # step per limit-sized window instead of one per line. A line that fills the whole
        # window (the limit plus one byte) is allowed only when that byte is a stuffed dot.
        window = self._window
        dot = 0x2E if self._stuffed else -1
        pos, size = 0, len(lines)
        while pos < size:
            lf = lines.rfind(b"\n", pos, pos + window)
            if lf < 0:
                return True
            if lf - pos + 1 == window and lines[pos] != dot and lines.find(b"\n", pos, lf) < 0:
                return True  # one line of the limit plus one byte, and no stuffed dot
            pos = lf + 1
        return False

    # -- headers ---------------------------------------------------------------------------------

    def _scan_headers(self) -> None:
        head = self._head
        pos = self._head_pos
        while (lf := head.find(b"\n", pos)) >= 0:
            if lf == pos + 1:
                self._end_headers(pos, lf + 1, blank_line=True)
                return
            continuation = head[pos] in (0x20, 0x09) and pos > 0
            if not continuation and not _FIELD_NAME.match(head, pos):
                # Not a header field: the body starts here, as Postfix does it.
                self._end_headers(pos, pos, blank_line=False)
                return
            pos = lf + 1
        self._head_pos = pos
        if pos > self._max_header:
            self._problems.add(DataProblem.HEADER_TOO_BIG)

    def _end_headers(self, header_end: int, body_start: int, *, blank_line: bool) -> None:
        if header_end > self._max_header:
            self._problems.add(DataProblem.HEADER_TOO_BIG)
            return
        self.header_block = bytes(self._head[:header_end])
        self._store(self._head[body_start:])
        self._head = bytearray()
        self.blank_line = blank_line
        self.headers_complete = True

    def _store(self, data: bytes | bytearray) -> None:
        """Write to the spool; a full disk is noted and the rest is read to the end of data
        and dropped, so the message's lines are never taken for commands."""
        try:
            self._body.write(data)
        except OSError:
            self._problems.add(DataProblem.NO_SPACE)

    # -- results ---------------------------------------------------------------------------------

    @property
    def problem(self) -> DataProblem | None:
        """The most serious problem found, or None."""
        return min(self._problems) if self._problems else None

    @property
    def headers(self) -> list[Header]:
        """The parsed header block."""
        return parse_header_block(self.header_block)

    @property
    def body(self) -> IO[bytes]:
        """The body spool (CRLF lines, dot-stuffing undone); the caller owns it after the end."""
        return self._body

    def close(self) -> None:
        """Drop the spool (when the message is refused)."""
        self._body.close()
