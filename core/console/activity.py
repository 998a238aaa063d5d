"""`Activity`: what mailgate decided over the last hours, in five-minute buckets, for the
console's overview (messages per outcome, verdicts per plugin). Bounded: `hours` of buckets."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

BUCKET = 300.0


@dataclass(slots=True)
class Bucket:
    """Five minutes of counts."""

    start: float
    outcomes: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(plugin, verdict kind)."""


class Activity:
    """Counts told by `mailgate.metrics.Metrics` (the flow's outcomes, the pipeline's calls)."""

    def __init__(self, hours: float = 6.0) -> None:
        self.buckets: deque[Bucket] = deque(maxlen=int(hours * 3600 / BUCKET))

    def _current(self, now: float | None = None) -> Bucket:
        now = time.time() if now is None else now
        start = now - now % BUCKET
        if not self.buckets or self.buckets[-1].start != start:
            self.buckets.append(Bucket(start))
        return self.buckets[-1]

    def outcome(self, outcome: str, now: float | None = None) -> None:
        """A transaction ended with `outcome` (``accepted``, ``rejected``, ...)."""
        self._current(now).outcomes[outcome] += 1

    def verdict(self, plugin: str, kind: str, now: float | None = None) -> None:
        """`plugin` answered with a verdict of `kind`."""
        self._current(now).verdicts[(plugin, kind)] += 1

    def totals(self) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        """Everything still in the window, summed."""
        outcomes: Counter[str] = Counter()
        verdicts: Counter[tuple[str, str]] = Counter()
        for bucket in self.buckets:
            outcomes.update(bucket.outcomes)
            verdicts.update(bucket.verdicts)
        return outcomes, verdicts
