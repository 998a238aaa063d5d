"""The node's one ``/metrics``: every worker's metrics, read from its own endpoint and summed.

Each worker serves its registry on a unix socket in the node directory (``metrics-N.sock``);
the master answers ``GET /metrics`` by reading them all and adding up samples with the same
name and labels: counters, histograms (buckets, counts, sums) and gauges such as the open
sessions add up. Samples that say the same thing in every worker are not added:
``mailgate_build_info`` (always 1) and ``*_created`` timestamps (the earliest is kept). A
worker that does not answer within a second is left out of that scrape and logged.
``mailgate_config_reloads`` is the master's own: a reload is checked, and may be refused, by the
master before any worker sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from mailgate.logging import get_logger
from mailgate.metrics import MetricsEndpoint

log = get_logger("mailgate.workers")

_SCRAPE_TIMEOUT = 1.0
_SAME_IN_EVERY_WORKER = frozenset({"mailgate_build_info"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def merge(expositions: list[str], own: str = "") -> str:
    """One exposition (Prometheus's text format) with the samples of `expositions` summed;
    the families in `own` (the master's) replace theirs of the same name."""
    mine = {family.name for family in text_string_to_metric_families(own)}
    families: dict[str, tuple[str, str]] = {}
    """name -> (type, help), in first-seen order."""
    samples: dict[str, dict[SampleKey, float]] = {}
    for text in [*expositions, own]:
        for family in text_string_to_metric_families(text):
            if family.name in mine and text is not own:
                continue
            families.setdefault(family.name, (family.type, family.documentation))
            values = samples.setdefault(family.name, {})
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in values:
                    values[key] = s.value
                elif s.name.endswith("_created"):
                    values[key] = min(values[key], s.value)
                elif family.name not in _SAME_IN_EVERY_WORKER:
                    values[key] += s.value
    lines: list[str] = []
    for name, (kind, doc) in families.items():
        exposed = name + "_total" if kind == "counter" else name
        lines.append(f"# HELP {exposed} {_escape_help(doc)}")
        lines.append(f"# TYPE {exposed} {kind}")
        for (sample, labels), value in samples[name].items():
            lines.append(f"{sample}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    parts = []
    for k, v in labels:
        escaped = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{k}="{escaped}"')
    return "{" + ",".join(parts) + "}"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(value)


async def scrape(path: str) -> str:
    """The exposition a worker serves on the unix socket `path`."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise OSError(f"answered {head.splitlines()[0][:80]!r}")
    return body.decode("utf-8")


class NodeMetricsServer(MetricsEndpoint):
    """``GET /metrics`` on `address` (``host:port``), answered with every worker's sum.

    `paths` gives the metrics sockets of the workers running now.
    """

    def __init__(
        self, address: str, paths: Callable[[], list[str]], own: Callable[[], bytes] | None = None
    ) -> None:
        super().__init__(address)
        self.paths = paths
        self.own = own
        """The master's own metrics (its reload counts), which replace the workers'."""

    async def body(self) -> bytes:
        """The summed metrics of every worker that answers."""
        paths = self.paths()
        results = await asyncio.gather(
            *(asyncio.wait_for(scrape(p), _SCRAPE_TIMEOUT) for p in paths),
            return_exceptions=True,
        )
        texts = []
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("worker metrics not read", socket=path, error=str(result)[:200])
            else:
                texts.append(result)
        own = self.own().decode("utf-8") if self.own is not None else ""
        return merge(texts, own).encode("utf-8")
