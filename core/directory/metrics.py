"""The directory caches on ``/metrics``: lookups by outcome, and the answers kept.

One collector per Prometheus registry reads the caches of the running backends when scraped.
A backend adds its cache at start and removes it at stop; what a removed cache counted is
kept, so the counters never go down across a reload (the new instance starts before the old
one stops).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from mailgate.directory.cache import DirectoryCache

OUTCOMES = ("hit", "miss", "failed")
"""How a lookup went: answered from the cache, asked of the backend, or failed there."""


def _counts(cache: DirectoryCache) -> dict[str, int]:
    return {"hit": cache.hits, "miss": cache.misses, "failed": cache.failures}


class DirectoryMetrics(Collector):
    """``mailgate_directory_lookups_total{backend, outcome}`` and
    ``mailgate_directory_cache_entries{backend}``, summed over the caches of each backend kind
    (``sql``, ``ldap``)."""

    def __init__(self) -> None:
        self._caches: dict[DirectoryCache, str] = {}
        self._retired: Counter[tuple[str, str]] = Counter()

    def add(self, cache: DirectoryCache, backend: str) -> None:
        """Count `cache` under `backend` from now on."""
        self._caches[cache] = backend

    def remove(self, cache: DirectoryCache) -> None:
        """Stop reading `cache`, keeping what it counted."""
        backend = self._caches.pop(cache, None)
        if backend is not None:
            for outcome, n in _counts(cache).items():
                self._retired[backend, outcome] += n

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """The metric families, as they are now."""
        lookups = CounterMetricFamily(
            "mailgate_directory_lookups",
            "Directory lookups: answered from the cache (hit), asked of the backend (miss), "
            "or failed there (failed: a timeout or an error; the backend's on_error applied)",
            labels=["backend", "outcome"],
        )
        entries = GaugeMetricFamily(
            "mailgate_directory_cache_entries",
            "Answers the directory caches keep now",
            labels=["backend"],
        )
        totals = Counter(self._retired)
        kept: Counter[str] = Counter()
        backends = set(self._caches.values()) | {b for b, _ in self._retired}
        for cache, backend in list(self._caches.items()):
            for outcome, n in _counts(cache).items():
                totals[backend, outcome] += n
            kept[backend] += len(cache)
        for backend in sorted(backends):
            for outcome in OUTCOMES:
                lookups.add_metric([backend, outcome], totals[backend, outcome])
            entries.add_metric([backend], kept[backend])
        yield lookups
        yield entries


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, DirectoryMetrics]
_collectors = weakref.WeakKeyDictionary()


def directory_metrics(registry: CollectorRegistry) -> DirectoryMetrics:
    """The one collector of `registry` (registered on first use)."""
    collector = _collectors.get(registry)
    if collector is None:
        collector = _collectors[registry] = DirectoryMetrics()
        registry.register(collector)
    return collector
