"""RFC 5321 section 4.5.2 transparency for DATA, applied chunk by chunk while streaming.

Every line that starts with ``.`` gets one more ``.``. A line starts at the beginning of the
message and after *any* CR or LF, bare or not: a downstream that accepts bare line endings must
never see an unstuffed ``.`` at what it takes for the start of a line (SMTP smuggling).
"""

from __future__ import annotations

_EOL = (10, 13)  # LF, CR


class DotStuffer:
    """Stuffs a message given in arbitrary chunks; the result does not depend on the split."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        # The last two bytes fed: they decide whether the next chunk starts a line and whether
        # the message already ends with CRLF.
        self._tail = b"\n"

    def feed(self, chunk: bytes) -> bytes:
        """The stuffed form of `chunk`, given everything fed before it."""
        if not chunk:
            return chunk
        out = chunk.replace(b"\n.", b"\n..").replace(b"\r.", b"\r..")
        if chunk[0] == 0x2E and self._tail[-1] in _EOL:
            out = b"." + out
        self._tail = (self._tail + chunk[-2:])[-2:]
        return out

    def end(self) -> bytes:
        """The end-of-data marker, with the CRLF the last line may lack."""
        return b".\r\n" if self._tail == b"\r\n" else b"\r\n.\r\n"


def stuff(data: bytes) -> bytes:
    """The stuffed form of a whole message (without the end marker)."""
    return DotStuffer().feed(data)


def unstuff(data: bytes) -> bytes:
    """Invert `stuff`: drop the first ``.`` of every line that starts with one."""
    out = data.replace(b"\n..", b"\n.").replace(b"\r..", b"\r.")
    return out[1:] if out.startswith(b"..") else out
