"""RFC 5321 section 4.5.2 transparency for DATA, applied chunk by chunk while streaming.

Every line that starts with ``.`` gets one more ``.``. A line starts at the beginning of the
message and after *any* CR or LF, bare or not: a downstream that accepts bare line endings must
never see an unstuffed ``.`` at what it takes for the start of a line (SMTP smuggling).
"""

from __future__ import annotations

_EOL = (10, 13)  # LF, CR


class DotStuffer:
    """Stuffs a message given in arbitrary chunks; the result does not depend on the split."""

    __slots__ = ("_at_line_start", "_last")

    def __init__(self) -> None:
        self._at_line_start = True
        self._last = -1

    def feed(self, chunk: bytes) -> bytes:
        """The stuffed form of `chunk`, given everything fed before it."""
        if not chunk:
            return chunk
        out = chunk.replace(b"\n.", b"\n..").replace(b"\r.", b"\r..")
        if self._at_line_start and chunk[0] == 0x2E:
            out = b"." + out
        self._last = chunk[-1]
        self._at_line_start = self._last in _EOL
        return out

    def end(self) -> bytes:
        """The end-of-data marker, with the CRLF the last line may lack."""
        return b".\r\n" if self._ended_by_crlf else b"\r\n.\r\n"

    @property
    def _ended_by_crlf(self) -> bool:
        return self._last == 10 and self._crlf_seen

    _crlf_seen = True


def stuff(data: bytes) -> bytes:
    """The stuffed form of a whole message (without the end marker)."""
    return DotStuffer().feed(data)


def unstuff(data: bytes) -> bytes:
    """Invert `stuff`: drop the first ``.`` of every line that starts with one."""
    out = data.replace(b"\n..", b"\n.").replace(b"\r..", b"\r.")
    return out[1:] if out.startswith(b"..") else out
