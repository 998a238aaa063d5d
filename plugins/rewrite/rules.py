"""Ordered regex and expression rules of the `rewrite` plugin (``sender_rules``,
``recipient_rules``).

A rule matches an address by a regular expression (`match`, a full match), by an expression
(`when`), or both; it rewrites it by a template (`replace`) or by an expression
(`replace_expr`). Rules are asked in order; after a match, `stop` ends the list or the next
rules see the rewritten address. A result that is not a valid address is logged and the
address stays as it was before that rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailgate.logging import get_logger
from mailgate.plugins.rewrite.lookup import is_address
from mailgate.plugins.rewrite.rule_expressions import (
    BARE,
    Facts,
    RuleExpression,
    address_variables,
)
from mailgate.plugins.rewrite.template import BUILTIN_FIELDS, Template, parse_template

log = get_logger("mailgate.plugins.rewrite")

MAX_ADDRESS = 254
"""The longest address a rule may make (RFC 5321's 256-octet path, less the brackets)."""


def is_valid_result(text: str) -> bool:
    """True for what a rule may turn an address into: a printable ``local@domain``."""
    return len(text) <= MAX_ADDRESS and text.isprintable() and is_address(text)


@dataclass(slots=True)
class RuleSettings:
    """One rule: a table of ``sender_rules`` or ``recipient_rules``."""

    match: str = ""
    """A Python regular expression the whole address must match; its groups feed `replace`."""
    when: str = ""
    """A CEL expression that must be true too (or alone, without `match`)."""
    replace: str | None = None
    """The new address as a template: ``"{user}@example.org"``, ``"{1}+{2}@{domain}"``."""
    replace_expr: str | None = None
    """The new address as a CEL expression giving a string: ``'local + "@example.org"'``."""
    ignore_case: bool = True
    """Match `match` without regard to case (as Postfix's regexp tables do)."""
    stop: bool = True
    """After a match, ask no further rule (false: the next rules see the new address)."""
    headers: bool = False
    """Also rewrite the matching addresses in From: (sender rules) or To:/Cc: (recipient rules)."""
    rule: Rule = field(init=False, repr=False)
    """The compiled rule, built at load."""

    def __post_init__(self) -> None:
        self.rule = compile_rule(self)


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule (see `RuleSettings` for what each part means)."""

    pattern: re.Pattern[str] | None
    when: RuleExpression | None
    template: Template | None
    expression: RuleExpression | None
    stop: bool
    headers: bool
    source: str
    """The rule as written, for the log."""

    def groups(self, address: str, facts: Facts) -> dict[str, str] | None:
        """The groups of the match (named, numbered and ``"0"``), or None if the rule does
        not apply to `address`."""
        groups: dict[str, str] = {}
        if self.pattern is not None:
            found = self.pattern.fullmatch(address)
            if found is None:
                return None
            groups["0"] = found.group(0)
            for number, value in enumerate(found.groups(), 1):
                groups[str(number)] = value or ""
            for name, value in found.groupdict().items():
                groups[name] = value or ""
        else:
            groups["0"] = address
        variables = address_variables(address, groups)
        if self.when is not None and self.when.evaluate(variables, facts) is not True:
            return None
        return groups

    def produce(self, address: str, groups: dict[str, str], facts: Facts) -> str:
        """What the rule makes of `address`, not yet checked."""
        if self.template is not None:
            local, _, domain = address.rpartition("@")
            values = {"address": address, "local": local, "domain": domain} | groups
            return self.template.render(values)
        assert self.expression is not None
        value = self.expression.evaluate(address_variables(address, groups), facts)
        if not isinstance(value, str):
            raise TypeError(f"replace_expr gave {type(value).__name__}, not a string")
        return value


def compile_rule(settings: RuleSettings) -> Rule:
    """`settings` compiled; raises `ValueError` starting with the key at fault."""
    if not settings.match and not settings.when:
        raise ValueError("match: a rule needs a match (a regular expression), a when, or both")
    if (settings.replace is None) == (settings.replace_expr is None):
        raise ValueError("replace: a rule needs either replace (a template) or replace_expr")
    pattern = None
    available: list[str] = list(BUILTIN_FIELDS)
    if settings.match:
        flags = re.IGNORECASE if settings.ignore_case else 0
        try:
            pattern = re.compile(settings.match, flags)
        except re.error as exc:
            raise ValueError(f"match: not a regular expression: {exc}") from None
        available += [str(n) for n in range(pattern.groups + 1)] + list(pattern.groupindex)
    group_names = [a for a in available if a not in BUILTIN_FIELDS]
    when = _expression("when", settings.when, bool, group_names) if settings.when else None
    template = expression = None
    if settings.replace is not None:
        try:
            template = parse_template(settings.replace, available)
        except ValueError as exc:
            raise ValueError(f"replace: {exc}") from None
    else:
        expression = _expression("replace_expr", settings.replace_expr or "", str, group_names)
    source = " ".join(
        f"{k}={v!r}"
        for k, v in (
            ("match", settings.match),
            ("when", settings.when),
            ("replace", settings.replace),
            ("replace_expr", settings.replace_expr),
        )
        if v
    )
    return Rule(pattern, when, template, expression, settings.stop, settings.headers, source)


def _expression(key: str, source: str, kind: type, groups: Sequence[str]) -> RuleExpression:
    try:
        return RuleExpression(source, kind, groups)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a list of rules made of an address."""

    matched: bool
    """Some rule applied (even one whose result was refused)."""
    address: str
    """The address after the rules (the original when nothing valid came out)."""


class RuleList:
    """Rules asked in order (see the module docstring)."""

    def __init__(self, rules: Sequence[Rule], kind: str) -> None:
        self.rules = tuple(rules)
        self.kind = kind
        """``sender`` or ``recipient``, for the log."""

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, address: str, facts: Facts = BARE, *, headers_only: bool = False) -> Outcome:
        """Run the rules over `address`; with `headers_only`, only rules with ``headers``.

        Never raises: a rule whose expression fails or whose result is not a valid address is
        logged and leaves the address as it was before it.
        """
        current = address
        matched = False
        for index, rule in enumerate(self.rules):
            if headers_only and not rule.headers:
                continue
            try:
                groups = rule.groups(current, facts)
                if groups is None:
                    continue
                new = rule.produce(current, groups, facts)
            except Exception as exc:
                log.warning(
                    "rewrite rule failed", rules=self.kind, rule=index, address=current, error=exc
                )
                continue
            matched = True
            if is_valid_result(new):
                current = new
            else:
                log.warning(
                    "rewrite rule made an invalid address, kept the address",
                    rules=self.kind,
                    rule=index,
                    address=current,
                    result=new,
                )
            if rule.stop:
                break
        return Outcome(matched, current)
