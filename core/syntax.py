"""Strict readers for the numbers and tokens that arrive from the wire.

Python's `str.isdigit` and `int` accept every Unicode digit (``²``, ``١٢``): a number in an
SMTP parameter, a policy attribute or a milter macro must be ASCII digits, and not more of them
than the field can hold, or it is malformed.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+\Z")


def ascii_number(text: str, max_digits: int = 20) -> int | None:
    """`text` as a non-negative integer if it is 1 to `max_digits` ASCII digits, else None."""
    if not text or len(text) > max_digits or _DIGITS.match(text) is None:
        return None
    return int(text)


def ascii_port(text: str) -> int | None:
    """`text` as a TCP port (0 to 65535, ASCII digits), else None."""
    port = ascii_number(text, 5)
    return port if port is not None and port <= 65535 else None


def valid_utf8(text: str) -> bool:
    """False if `text` carries bytes that were not UTF-8 (decoded with ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+\Z")
_UTF8_XTEXT = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]|\\x\{[0-9A-F]{2,6}\}|[^\x00-\x7f])+\Z"
)
_ATOM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


def valid_xtext(value: str) -> bool:
    """RFC 3461 xtext: printable ASCII but ``+`` and ``=``, which come as ``+XX``."""
    return _XTEXT.match(value) is not None


def valid_orcpt(value: str) -> bool:
    """RFC 3461 ``ORCPT=addr-type;xtext`` (RFC 6533's ``utf-8`` type with its own encoding)."""
    kind, sep, address = value.partition(";")
    if not sep or not address or _ATOM.match(kind) is None:
        return False
    if kind.lower() == "utf-8":
        return valid_utf8(address) and _UTF8_XTEXT.match(address) is not None
    return _XTEXT.match(address) is not None
