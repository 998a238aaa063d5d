"""Reading Authentication-Results header values (RFC 8601 section 2.2).

`parse` reads a whole value (comments, folding and method versions allowed where the grammar
allows them; comments are dropped). `claimed_id` reads only as far as the authserv-id, and
leniently: it is what decides whether an incoming header claims to be ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.authentication_results.header import AuthResult
from mailgate.authentication_results.syntax import Scanner, SyntaxProblem


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    """An Authentication-Results value: who wrote it, its version ("" for none), what it says."""

    authserv_id: str
    version: str
    results: list[AuthResult]


def parse(value: str) -> ParsedHeader:
    """Read `value` (a header's value, folded or not); raise `SyntaxProblem` if it is not
    RFC 8601 syntax."""
    scanner = Scanner(value)
    authserv_id = scanner.read_value()
    version = ""
    if scanner.peek().isdigit():
        version = _read_number(scanner)
    scanner.expect(";")
    first = scanner.read_keyword()
    if first.lower() == "none" and scanner.at_end():
        return ParsedHeader(authserv_id, version, [])
    results = [_resinfo(scanner, first)]
    while not scanner.at_end():
        scanner.expect(";")
        results.append(_resinfo(scanner, scanner.read_keyword()))
    return ParsedHeader(authserv_id, version, results)


def _resinfo(scanner: Scanner, method: str) -> AuthResult:
    if scanner.peek() == "/":
        scanner.expect("/")
        _read_number(scanner)
    scanner.expect("=")
    result = scanner.read_keyword()
    reason = ""
    properties: dict[str, str] = {}
    while not scanner.at_end() and scanner.peek() != ";":
        name = scanner.read_keyword()
        if name.lower() == "reason" and scanner.peek() == "=" and not properties:
            scanner.expect("=")
            reason = scanner.read_value()
            continue
        scanner.expect(".")
        prop = scanner.read_keyword()
        scanner.expect("=")
        properties[f"{name}.{prop}"] = scanner.read_value()
    return AuthResult(method, result, reason, properties)


def _read_number(scanner: Scanner) -> str:
    number = scanner.read_keyword()
    if not number.isdigit():
        raise SyntaxProblem(scanner.text, scanner.pos, "a version number")
    return number


def claimed_id(value: str, *, arc: bool = False) -> str | None:
    """The authserv-id an incoming header claims, lower-cased; None if none can be read.

    Leading comments and folding are skipped, a quoted id is unquoted. For
    ARC-Authentication-Results (`arc`) the instance tag (``i=1;``) before it is skipped.
    """
    scanner = Scanner(value)
    if arc:
        _skip_instance(scanner)
    try:
        return scanner.read_value().lower()
    except SyntaxProblem:
        return None


def _skip_instance(scanner: Scanner) -> None:
    try:
        if scanner.read_keyword().lower() == "i":
            scanner.expect("=")
            _read_number(scanner)
            scanner.expect(";")
            return
    except SyntaxProblem:
        pass
    scanner.pos = 0
