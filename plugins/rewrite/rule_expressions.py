"""CEL expressions of the rewrite rules: mailgate's variables plus the address being rewritten.

A rule's `when` and `replace_expr` see every variable of `mailgate.expressions` (``sender``,
``rcpt``, ``client``, ``listener``, ...) and four more about the address the rule looks at
(the envelope sender, one recipient, or one address of a header):

=============  ==================================================================
``address``    the whole address, as the rule sees it (after earlier rules)
``local``      its local part (before the last ``@``)
``domain``     its domain (after the last ``@``)
``groups``     the groups of the rule's `match`: ``groups.user``, ``groups["1"]``
               (``groups["0"]`` is the whole match; a group that took no part is "")
=============  ==================================================================

Besides mailgate's helpers (``ip_in``, ``re_match``) they can call ``lower(text)``,
``upper(text)`` and ``replace(text, old, new)`` (every `old` replaced by `new`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cel

from mailgate.expressions import FUNCTIONS, VARIABLES, Expression, ExpressionError
from mailgate.session import Address, Session, Transaction

ADDRESS_VARIABLES = frozenset({"address", "local", "domain", "groups"})
"""The variables a rule expression has besides mailgate's own."""


def _replace(text: str, old: str, new: str) -> str:
    return text.replace(old, new)


RULE_FUNCTIONS: dict[str, Callable[..., Any]] = FUNCTIONS | {
    "lower": str.lower,
    "upper": str.upper,
    "replace": _replace,
}
"""The functions a rule expression can call."""


@dataclass(frozen=True, slots=True)
class Facts:
    """The session and transaction a rule is asked in (for mailgate's own variables)."""

    session: Session
    transaction: Transaction | None = None


BARE = Facts(Session(client_ip="192.0.2.1"))
"""What rules see when no session is given (unit use, `mailgate try` without one)."""


def address_variables(address: str, groups: Mapping[str, str]) -> dict[str, Any]:
    """The rule variables for `address` with the groups of its match."""
    local, _, domain = address.rpartition("@")
    return {"address": address, "local": local, "domain": domain, "groups": dict(groups)}


class RuleExpression:
    """A compiled CEL expression over the rule variables and mailgate's own.

    Raises `ExpressionError` at construction for a syntax error, an unknown variable, or a
    result of the wrong type (`kind`: ``bool`` or ``str``) on sample addresses; `groups` are
    the names (and numbers) of the rule's groups, present in the samples.
    """

    __slots__ = ("_program", "_standard", "kind", "source")

    def __init__(self, source: str, kind: type, groups: Sequence[str] = ()) -> None:
        self.source = source
        self.kind = kind
        try:
            self._program = cel.compile(source)
        except ValueError as exc:
            raise ExpressionError(source, str(exc).split("\n", 1)[0]) from None
        names = set(self._program.variables())
        known = VARIABLES | ADDRESS_VARIABLES
        unknown = sorted(n for n in names if n not in known and n not in RULE_FUNCTIONS)
        if unknown:
            raise ExpressionError(
                source, f"unknown variable {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        self._standard = {n: Expression(n, boolean=False) for n in sorted(names & VARIABLES)}
        sample_tx = Transaction(Address("a@example.net"), [Address("b@example.org")])
        for facts in (BARE, Facts(BARE.session, sample_tx)):
            for address in ("user@example.com", "x+tag@sub.example.org"):
                try:
                    sample = {name: "" for name in groups} | {"0": address}
                    value = self.evaluate(address_variables(address, sample), facts)
                except KeyError as exc:
                    raise ExpressionError(source, f"no key {exc} (the groups: {groups})") from None
                except Exception as exc:
                    raise ExpressionError(source, str(exc).split(". ", 1)[0]) from None
                if not isinstance(value, kind):
                    expected = "a bool" if kind is bool else "a string"
                    raise ExpressionError(
                        source, f"evaluates to {type(value).__name__}, expected {expected}"
                    )

    def evaluate(self, variables: Mapping[str, Any], facts: Facts) -> Any:
        """The value for these rule variables and this session (may raise)."""
        values = dict(variables)
        for name, expression in self._standard.items():
            values[name] = expression.evaluate(facts.session, facts.transaction)
        return self._program.execute(cel.Context(values, RULE_FUNCTIONS))

    def __repr__(self) -> str:
        return f"RuleExpression({self.source!r})"
