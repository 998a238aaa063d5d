"""The lexical pieces of RFC 8601 header values, both ways: writing values that read back
exactly (tokens, quoted strings, comments) and a scanner that reads them, comments and folding
included.

RFC 8601 takes ``value`` (a token or a quoted string) from RFC 2045 and comments and folding
white space (CFWS) from RFC 5322. Text that arrives from the outside (an SPF explanation comes
from a TXT record) is cleaned of control characters, so it can never end the header.
"""

from __future__ import annotations

import functools
import re

TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
"""RFC 2045 section 5.1: the characters a token may not hold."""

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
"""RFC 2045 token: printable US-ASCII without space and tspecials."""
_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
"""RFC 8601 Keyword (RFC 5321 Ldh-str): method, result, ptype and property names."""
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
_ADDRESS = re.compile(rf"(?:{_DOT_ATOM})?@{_DOMAIN}")
"""The unquoted ``[ [ local-part ] "@" ] domain-name`` form of a pvalue (RFC 8601 2.2)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""The characters `clean` turns into spaces: C0 controls and DEL."""

WHITESPACE = " \t\r\n"


def is_token(text: str) -> bool:
    """True if `text` is an RFC 2045 token (written without quotes)."""
    return _TOKEN.fullmatch(text) is not None


@functools.lru_cache(maxsize=1024)
def is_keyword(text: str) -> bool:
    """True if `text` is an RFC 8601 Keyword (letters, digits, inner hyphens)."""
    return _KEYWORD.fullmatch(text) is not None


def clean(text: str) -> str:
    """`text` with every control character (CR, LF, TAB, NUL, DEL, ...) made a space."""
    return _CONTROL.sub(" ", text)


@functools.lru_cache(maxsize=4096)
def quoted(text: str) -> str:
    """`text` as an RFC 2045 quoted string (cleaned; ``"`` and ``\\`` escaped). Remembered, as
    `pvalue`: most reasons and property values come again with the next message."""
    escaped = clean(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def value(text: str) -> str:
    """An RFC 2045 ``value``: the token itself, else the quoted string."""
    return text if is_token(text) else quoted(text)


@functools.lru_cache(maxsize=4096)
def pvalue(text: str) -> str:
    """A property value: a token or an address (``user@example.com``, ``@example.com``) as is,
    anything else quoted."""
    return text if is_token(text) or _ADDRESS.fullmatch(text) else quoted(text)


def comment(text: str) -> str:
    """`text` as an RFC 5322 comment (cleaned; parentheses and ``\\`` escaped)."""
    escaped = clean(text)
    for special in ("\\", "(", ")"):
        escaped = escaped.replace(special, "\\" + special)
    return f"({escaped})"


class SyntaxProblem(ValueError):
    """The text is not what RFC 8601 allows at `position`."""

    def __init__(self, text: str, position: int, expected: str) -> None:
        super().__init__(f"expected {expected} at {position} in {text!r}")
        self.position = position


class Scanner:
    """Reads a header value left to right; every ``read_*`` skips the CFWS before it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_cfws(self) -> None:
        """Skip white space, folding and (nested) comments; an unclosed comment runs to the
        end, as a mail reader would take it."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in WHITESPACE:
                self.pos += 1
            elif char == "(":
                self._skip_comment()
            else:
                return

    def _skip_comment(self) -> None:
        depth = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\":
                self.pos += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    return
        self.pos = len(self.text)

    def at_end(self) -> bool:
        """True if only CFWS is left."""
        self.skip_cfws()
        return self.pos >= len(self.text)

    def peek(self) -> str:
        """The next character after CFWS ('' at the end)."""
        self.skip_cfws()
        return self.text[self.pos : self.pos + 1]

    def expect(self, char: str) -> None:
        """Consume `char`, or raise `SyntaxProblem`."""
        if self.peek() != char:
            raise SyntaxProblem(self.text, self.pos, repr(char))
        self.pos += 1

    def read_keyword(self) -> str:
        """A Keyword, or raise `SyntaxProblem`."""
        self.skip_cfws()
        found = _KEYWORD.match(self.text, self.pos)
        if found is None:
            raise SyntaxProblem(self.text, self.pos, "a keyword")
        self.pos = found.end()
        return found.group()

    def read_value(self) -> str:
        """A quoted string (unquoted), or the run of characters up to white space, ``;``,
        ``(`` or ``"`` (a token, an address, or whatever a sender wrote there)."""
        self.skip_cfws()
        if self.peek() == '"':
            return self._read_quoted()
        start = self.pos
        text = self.text
        while self.pos < len(text) and text[self.pos] not in WHITESPACE + ';("':
            self.pos += 1
        if self.pos == start:
            raise SyntaxProblem(text, start, "a value")
        return text[start : self.pos]

    def _read_quoted(self) -> str:
        text = self.text
        self.pos += 1
        out: list[str] = []
        while self.pos < len(text):
            char = text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\" and self.pos < len(text):
                out.append(text[self.pos])
                self.pos += 1
            elif char not in "\r\n":  # folding inside the string: unfold
                out.append(char)
        raise SyntaxProblem(text, self.pos, "the end of a quoted string")
