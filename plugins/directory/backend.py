"""What the bundled backends share: the subject's parts, the domains they serve, the cache."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mailgate.directory import Entry, Question
from mailgate.directory.cache import CacheSettings, DirectoryCache
from mailgate.directory.metrics import DirectoryMetrics, directory_metrics
from mailgate.plugin import PluginContext


def parts(subject: str) -> dict[str, str]:
    """The values a query or filter may use: address, local, domain and login."""
    local, at, domain = subject.rpartition("@")
    if not at:
        local, domain = subject, ""
    return {"address": subject, "local": local, "domain": domain.lower(), "login": subject}


def expansion(subject: str, values: list[str]) -> tuple[str, ...]:
    """The addresses `subject` delivers to: `values` without the subject itself, in order."""
    seen = {subject.lower()}
    out = []
    for v in values:
        v = v.strip()
        if v and v.lower() not in seen:
            seen.add(v.lower())
            out.append(v)
    return tuple(out)


class Backend:
    """A directory backend's common part: which questions it answers, and the cache."""

    def __init__(self, settings: CacheSettings, domains: list[str]) -> None:
        settings.check()
        self.cache = DirectoryCache(settings)
        self.domains = frozenset(d.lower().strip(".") for d in domains)
        self._metrics: DirectoryMetrics | None = None

    def count_in(self, context: PluginContext, kind: str) -> None:
        """Show this backend's cache on ``/metrics`` (when ``[metrics]`` is set) as `kind`."""
        if context.registry is not None:
            self._metrics = directory_metrics(context.registry)
            self._metrics.add(self.cache, kind)

    def stop_counting(self) -> None:
        """Take this backend's cache off ``/metrics`` (what it counted stays in the totals)."""
        if self._metrics is not None:
            self._metrics.remove(self.cache)
            self._metrics = None

    def serves(self, question: Question, subject: str) -> bool:
        """False for a recipient outside `domains` (when domains are set)."""
        if question is not Question.RECIPIENT or not self.domains:
            return True
        return subject.rpartition("@")[2].lower().rstrip(".") in self.domains

    async def answer(
        self, question: Question, subject: str, fetch: Callable[[], Awaitable[Entry]]
    ) -> Entry | None:
        """The (cached) answer, or None for a subject this backend does not serve."""
        if not subject or not self.serves(question, subject):
            return None
        return await self.cache.lookup(question, subject, fetch)
