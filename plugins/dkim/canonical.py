"""DKIM canonicalisation (RFC 6376 3.4) and the split of a message into header fields and body,
giving exactly the bytes dkimpy gives, for the fast verifier (`fast`).

dkimpy splits the whole message with a regular expression, canonicalises every header field
for every signature and runs two regular expressions over every body; these functions work on
the header block alone, canonicalise only the fields a signature names, and skip a regular
expression when the text holds nothing it could change. ``tests/plugins/dkim/test_canonical``
checks on random input that the bytes are dkimpy's.
"""

from __future__ import annotations

import re
from typing import Literal

Field = tuple[bytes, bytes]
"""A header field as dkimpy keeps it: the name, and the value after the colon with its CRLFs
(folded lines included)."""

Algorithm = Literal["simple", "relaxed"]

_WSP = re.compile(rb"[\t ]+")
_CHANGING_WSP = re.compile(rb" [\t ]+|\t[\t ]*")
"""The runs of spaces and tabs that relaxed canonicalisation changes (all but single spaces):
replacing these alone gives what replacing every run gives, several times sooner."""
_LINE_BREAK = re.compile(rb"\r?\n")
_FIELD_NAME_BYTES = bytes(range(0x21, 0x7F))


def split_message(data: bytes) -> tuple[list[Field], bytes] | None:
    """The header fields and the body of `data` as dkimpy's parser finds them, or None for a
    message this split leaves to dkimpy: a header block with a bare CR or LF, or a line that is
    neither a field, nor a folded line, nor an mbox ``From`` line."""
    if data.startswith(b"\r\n"):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end]
    breaks = head.count(b"\r\n")
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        return None
    fields: list[Field] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return None
            name, value = fields[-1]
            fields[-1] = (name, value + line + b"\r\n")
            continue
        colon = line.find(b":")
        name = line[:colon]
        if colon > 0 and not name.translate(None, _FIELD_NAME_BYTES):
            fields.append((name, line[colon + 1 :] + b"\r\n"))
        elif not line.startswith(b"From "):
            return None
    body = data[end + 4 :]
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _LINE_BREAK.sub(b"\r\n", body)
    return fields, body


def canonical_body(body: bytes, algorithm: Algorithm) -> bytes:
    """`body` canonicalised (RFC 6376 3.4.3 and 3.4.4)."""
    if algorithm == "simple":
        return _one_final_crlf(body)
    # Looking for one byte is several times faster than for two; a body without a space or a
    # tab (base64, as most large attachments are) is then done at once.
    tab = b"\t" in body
    if tab or b" " in body:
        if tab or b" \r\n" in body:
            body = _strip_line_ends(body)
        if tab or b"  " in body:
            body = _CHANGING_WSP.sub(b" ", body)
    body = _one_final_crlf(body)
    return b"" if body == b"\r\n" else body


def canonical_field(field: Field, algorithm: Algorithm) -> Field:
    """One header field canonicalised (RFC 6376 3.4.1 and 3.4.2), its value ending in CRLF."""
    if algorithm == "simple":
        return field
    name, value = field
    if b"\n" in value:
        # Removes each CRLF, then each bare LF: what removing every match of \r?\n removes.
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP.sub(b" ", value)
    return name.lower().rstrip(), value.strip() + b"\r\n"


def _one_final_crlf(body: bytes) -> bytes:
    """`body` with its empty lines at the end removed and one CRLF at the end."""
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n"


def _strip_line_ends(body: bytes) -> bytes:
    """`body` without the spaces and tabs before each CRLF (not before its end without one)."""
    lines = body.split(b"\r\n")
    last = lines.pop()
    return b"\r\n".join([line.rstrip(b" \t") for line in lines] + [last])
