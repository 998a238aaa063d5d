"""`Dynamic[T]`: a setting whose value may depend on the session and transaction.

In TOML a dynamic setting is either a plain value or a list of rules, the first true one wins::

    threshold = 5.0
    threshold = [
        { if = 'ip_in(client.ip, ["192.0.2.0/24"])', then = 10.0 },
        { if = 'rcpt.domain == "example.org"', then = 3.0 },
        { else = 5.0 },
    ]

The plugin reads it with ``self.settings.threshold.value(session, transaction)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from mailgate.expressions import Expression
from mailgate.session import Session, Transaction

T = TypeVar("T")
U = TypeVar("U")


class Dynamic(Generic[T]):
    """A value, or rules ``(condition, value)`` tried in order with a final default.

    Immutable, so it can be a field default:
    ``limit: Dynamic[int] = field(default=Dynamic.fixed(10))``.
    """

    __slots__ = ("_default", "_rules")

    def __init__(self, rules: Sequence[tuple[Expression, T]], default: T) -> None:
        self._rules = tuple(rules)
        self._default = default

    @classmethod
    def fixed(cls, value: T) -> Dynamic[T]:
        """A value that does not depend on anything."""
        return cls((), value)

    @property
    def is_fixed(self) -> bool:
        """True when there are no rules (the value is always the default)."""
        return not self._rules

    @property
    def default(self) -> T:
        """The ``else`` value (the only value of a fixed setting)."""
        return self._default

    @property
    def rules(self) -> tuple[tuple[Expression, T], ...]:
        """The ``(if, then)`` rules, in order."""
        return self._rules

    def values(self) -> list[T]:
        """Every value the setting can take (each ``then``, then the ``else``), for checks at
        load that must hold whatever the transaction."""
        return [then for _, then in self._rules] + [self._default]

    def map(self, convert: Callable[[T], U]) -> Dynamic[U]:
        """The same rules with each value converted once, at load (a map compiled into a
        lookup table, a host:port parsed): the run-time choice then costs nothing more."""
        return Dynamic([(c, convert(v)) for c, v in self._rules], convert(self._default))

    def value(self, session: Session, transaction: Transaction | None = None) -> T:
        """The value of the first rule whose condition is true, else the default."""
        for condition, then in self._rules:
            if condition(session, transaction):
                return then
        return self._default

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dynamic):
            # A fixed setting is its value: ``settings.max_recipients == 10`` holds.
            return self.is_fixed and bool(self._default == other)
        mine = [(c.source, v) for c, v in self._rules]
        theirs = [(c.source, v) for c, v in other._rules]
        return mine == theirs and self._default == other._default

    def __hash__(self) -> int:
        if self.is_fixed:
            try:
                return hash(self._default)
            except TypeError:
                return hash(repr(self._default))
        return hash((tuple(c.source for c, _ in self._rules), repr(self._default)))

    def __repr__(self) -> str:
        if self.is_fixed:
            return f"Dynamic.fixed({self._default!r})"
        rules = ", ".join(f"({c.source!r}, {v!r})" for c, v in self._rules)
        return f"Dynamic([{rules}], {self._default!r})"
