"""Counters for the ``limits`` plugin: the `Counters` seam and its in-memory implementation.

A rate counter counts per key and window. With sliding windows the count is the current fixed
window's plus the previous one's weighed by how much of it still lies inside the last
`window` seconds (two numbers per key, whatever the rate). `add` counts only what it allows:
a refused attempt does not count, so a client that waits gets through again.

In memory, rate counters are kept in one least-recently-used table of at most ``max_keys``
entries; past it the oldest is forgotten (that key then counts from zero, the permissive side).
Concurrent slots are kept apart, one count per key with open sessions, removed at zero.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Hit:
    """The answer of a counter: whether the attempt was allowed, and the count it saw."""

    allowed: bool
    count: int
    """The count after the attempt when allowed, before it when refused."""


class Counters(Protocol):
    """Where the counts live: this process's memory or a Redis shared by several nodes."""

    async def add(self, name: str, key: str, amount: int, limit: int, window: float) -> Hit:
        """Count `amount` for `key` of rule `name` if the count stays within `limit`.

        An `amount` of 0 only looks: allowed while the count is below `limit`.
        """
        ...

    async def acquire(self, name: str, key: str, token: str, limit: int) -> Hit:
        """Take a concurrent slot for `key` (held by `token`) if fewer than `limit` are held."""
        ...

    async def release(self, name: str, key: str, token: str) -> None:
        """Give back the slot `token` holds for `key`."""
        ...


def sliding_count(current: float, previous: float, now: float, window: float) -> float:
    """The sliding-window estimate: `current` plus the part of `previous` still inside."""
    elapsed = (now % window) / window
    return current + previous * (1.0 - elapsed)


class MemoryCounters:
    """`Counters` in this process (see the module docstring)."""

    def __init__(
        self,
        max_keys: int,
        *,
        sliding: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_keys = max_keys
        self.sliding = sliding
        self.clock = clock
        self._rates: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        """(rule, key) -> [window index, current count, previous count], oldest use first."""
        self._slots: dict[tuple[str, str], set[str]] = {}

    def __len__(self) -> int:
        """Rate counters kept now (at most `max_keys`)."""
        return len(self._rates)

    async def add(self, name: str, key: str, amount: int, limit: int, window: float) -> Hit:
        """See `Counters.add`."""
        now = self.clock()
        index = math.floor(now / window)
        entry = self._entry((name, key), index)
        count = sliding_count(entry[1], entry[2], now, window) if self.sliding else entry[1]
        if amount == 0:
            return Hit(count < limit, math.floor(count))
        if count + amount > limit:
            return Hit(False, math.floor(count))
        entry[1] += amount
        return Hit(True, math.floor(count + amount))

    def _entry(self, key: tuple[str, str], index: int) -> list[float]:
        entry = self._rates.get(key)
        if entry is None:
            entry = self._rates[key] = [index, 0.0, 0.0]
            if len(self._rates) > self.max_keys:
                self._rates.popitem(last=False)
            return entry
        self._rates.move_to_end(key)
        if entry[0] == index - 1:
            entry[:] = [index, 0.0, entry[1]]
        elif entry[0] != index:
            entry[:] = [index, 0.0, 0.0]
        return entry

    async def acquire(self, name: str, key: str, token: str, limit: int) -> Hit:
        """See `Counters.acquire`."""
        held = self._slots.setdefault((name, key), set())
        if token in held:
            return Hit(True, len(held))
        if len(held) >= limit:
            if not held:
                del self._slots[(name, key)]
            return Hit(False, len(held))
        held.add(token)
        return Hit(True, len(held))

    async def release(self, name: str, key: str, token: str) -> None:
        """See `Counters.release`."""
        held = self._slots.get((name, key))
        if held is None:
            return
        held.discard(token)
        if not held:
            del self._slots[(name, key)]

    def open_slots(self) -> int:
        """Concurrent slots held now (for tests and the report)."""
        return sum(len(h) for h in self._slots.values())
