"""Replacement templates of the rewrite rules: ``"{user}+{2}@example.org"``.

A field in braces is replaced by a group of the rule's match, by name (``{user}``) or number
(``{1}``; ``{0}`` is the whole match), or by a part of the address being rewritten:
``{address}``, ``{local}``, ``{domain}`` (a group of the same name wins). ``{{`` and ``}}``
stand for a brace. A group that took no part in the match gives "".
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

BUILTIN_FIELDS = ("address", "local", "domain")
"""Fields every template may use: parts of the address the rule looks at."""

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text and field names, alternating (literal first)."""

    parts: tuple[str, ...]
    """``("", "user", "@example.org")``: even indexes are text, odd ones field names."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names the template uses, in order."""
        return self.parts[1::2]

    def render(self, values: Mapping[str, str]) -> str:
        """The text with each field replaced by its value in `values` ("" when absent)."""
        return "".join(
            part if i % 2 == 0 else values.get(part, "") for i, part in enumerate(self.parts)
        )


def parse_template(text: str, available: Collection[str]) -> Template:
    """`text` parsed; raises `ValueError` for a stray brace or a field not in `available`."""
    parts: list[str] = []
    literal: list[str] = []
    position = 0
    for token in _TOKEN.finditer(text):
        literal.append(text[position : token.start()])
        position = token.end()
        if token.group() in ("{{", "}}"):
            literal.append(token.group()[0])
            continue
        name = token.group(1)
        if name is None:
            raise ValueError(
                f"a lone {token.group()!r} at position {token.start()} (write it twice for a brace)"
            )
        if not _FIELD.fullmatch(name):
            raise ValueError(f"{{{name}}} is not a group name or number")
        if name not in available:
            known = ", ".join(f"{{{a}}}" for a in available)
            raise ValueError(f"{{{name}}} names no group of the pattern (there are: {known})")
        parts += ["".join(literal), name]
        literal = []
    literal.append(text[position:])
    parts.append("".join(literal))
    return Template(tuple(parts))
