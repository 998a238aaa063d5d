"""Postfix's SMTPD access policy protocol: requests in, ``action=...`` replies out. Pure code.

A request is ``name=value`` lines, each ending in LF, and an empty line after the last one; the
reply is one ``action=VALUE`` line and an empty line. One connection carries many requests, one
after another. `RequestReader` splits a byte stream into requests; `format_reply` writes a reply;
`verdict_action` is the access(5) action a plugin's verdict becomes.
"""

from __future__ import annotations

from collections.abc import Mapping

from mailgate.verdict import Verdict, VerdictKind

DUNNO = "DUNNO"
""""No opinion": Postfix goes on with the next restriction. Never ``OK``: in
``smtpd_recipient_restrictions`` an OK would skip ``reject_unauth_destination`` after it."""

STATES = ("CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN")
"""The ``protocol_state`` values Postfix sends."""


class PolicyProtocolError(ValueError):
    """A request the listener cannot read: too big, or a line that is not ``name=value``."""


def parse_line(line: bytes) -> tuple[str, str]:
    """One attribute line (without its LF; a trailing CR is dropped) as ``(name, value)``."""
    if line.endswith(b"\r"):
        line = line[:-1]
    name, sep, value = line.partition(b"=")
    if not sep or not name or b"\0" in line or name.strip() != name:
        shown = line[:80].decode("utf-8", "backslashreplace")
        raise PolicyProtocolError(f"not a name=value attribute line: {shown!r}")
    return name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")


def parse_request(block: bytes) -> dict[str, str]:
    """The attributes of one request: `block` is its lines, without the final empty line.

    A name given twice keeps its last value (Postfix never repeats one).
    """
    attrs: dict[str, str] = {}
    for line in block.split(b"\n"):
        name, value = parse_line(line)
        attrs[name] = value
    return attrs


class RequestReader:
    """Splits the bytes Postfix sends into requests, refusing any larger than `max_request`."""

    def __init__(self, max_request: int) -> None:
        self.max_request = max_request
        self._buffer = bytearray()
        self._checked = 0
        """How much of the buffer is already known to be whole, well-formed lines."""

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """The requests completed by `data`, in order; raises `PolicyProtocolError`."""
        self._buffer += data
        requests: list[dict[str, str]] = []
        while True:
            end = self._buffer.find(b"\n\n")
            crlf = self._buffer.find(b"\r\n\r\n")
            if crlf >= 0 and (end < 0 or crlf < end):
                end, size = crlf, 4
            else:
                size = 2
            if end < 0:
                break
            if end + size > self.max_request:
                raise PolicyProtocolError(f"request larger than {self.max_request} bytes")
            block = bytes(self._buffer[:end])
            del self._buffer[: end + size]
            self._checked = 0
            requests.append(parse_request(block))
        self._check_pending()
        return requests

    def _check_pending(self) -> None:
        buffer = self._buffer
        if len(buffer) > self.max_request:
            raise PolicyProtocolError(f"request larger than {self.max_request} bytes")
        if buffer[:1] == b"\n" or buffer[:2] == b"\r\n":
            raise PolicyProtocolError("empty request")
        # Check complete lines at once, so a malformed request is refused before it ends.
        last = buffer.rfind(b"\n")
        if last > self._checked:
            for line in bytes(buffer[self._checked : last]).split(b"\n"):
                parse_line(line)
            self._checked = last + 1

    @property
    def pending(self) -> bool:
        """True while part of a request has been read."""
        return bool(self._buffer)


def encode_request(attrs: Mapping[str, str]) -> bytes:
    """A request as Postfix writes it (for tests and tools); values must not contain LF."""
    lines = [f"{name}={value}\n" for name, value in attrs.items()]
    return "".join(lines).encode("utf-8", "surrogateescape") + b"\n"


def format_reply(action: str) -> bytes:
    """``action=ACTION`` and the empty line; line breaks and NUL in `action` become spaces."""
    clean = "".join(" " if ch in "\r\n\0" else ch for ch in action).strip()
    return f"action={clean}\n\n".encode("utf-8", "surrogateescape")


def parse_reply(data: bytes) -> str:
    """The action of a reply `format_reply` wrote (for tests and tools)."""
    text = data.decode("utf-8", "surrogateescape")
    if not text.startswith("action=") or not text.endswith("\n\n") or text.count("\n") != 2:
        raise PolicyProtocolError(f"not a policy reply: {text[:80]!r}")
    return text[len("action=") : -2]


def one_line(text: str) -> str:
    """A verdict's text on one line: a policy reply cannot carry a multi-line SMTP reply."""
    return " ".join(part.strip() for part in text.split("\n") if part.strip())


def verdict_action(verdict: Verdict | None) -> str:
    """The access(5) action for `verdict`.

    reject, tempfail, disconnect: ``CODE STATUS text`` (the plugin's own reply, one line);
    discard: ``DISCARD reason``; quarantine: ``HOLD reason``; accept or None: ``DUNNO``.
    """
    if verdict is None or verdict.kind is VerdictKind.ACCEPT:
        return DUNNO
    if verdict.is_refusal:
        status = f"{verdict.status} " if verdict.status else ""
        return f"{verdict.code} {status}{one_line(verdict.text)}".rstrip()
    why = one_line(verdict.reason) or "by mailgate policy"
    return f"DISCARD {why}" if verdict.kind is VerdictKind.DISCARD else f"HOLD {why}"


def prepend_action(name: str, value: str) -> str:
    """``PREPEND Name: value`` (a folded value is unfolded: the action is one line)."""
    return f"PREPEND {name}: {one_line(value.replace(chr(13), ''))}"
