"""Prometheus metrics: what mailgate counts, and the HTTP endpoint that serves them.

`Metrics` holds every metric in a registry of its own (not prometheus_client's global one, so
several apps can live in one process). It is a pipeline observer (`Metrics.__call__`) for the
plugin calls; the ingress modules report sessions and message outcomes to it, having found it
among their pipeline's observers with `metrics_of`. `MetricsServer` answers ``GET /metrics``
on the running event loop. Labels are bounded: plugin, hook, status, verdict kind, ingress and
listener names from the configuration, never an address. See docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mailgate import __version__
from mailgate.config import split_host_port
from mailgate.logging import get_logger
from mailgate.pipeline import CallStatus, HookCall, Pipeline
from mailgate.session import Session, Transaction
from mailgate.verdict import Verdict, VerdictKind

if TYPE_CHECKING:
    from mailgate.console.activity import Activity

log = get_logger("mailgate.metrics")

CALL_SECONDS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""From a header added in microseconds to a scanner near its timeout."""

SIZE_BUCKETS = tuple(float(1024 * 4**i) for i in range(10))
"""1 KiB to 256 MiB, by factors of 4."""

OUTCOMES = {
    VerdictKind.ACCEPT: "accepted",
    VerdictKind.REJECT: "rejected",
    VerdictKind.TEMPFAIL: "tempfailed",
    VerdictKind.DISCARD: "discarded",
    VerdictKind.QUARANTINE: "quarantined",
    VerdictKind.DISCONNECT: "disconnected",
}
"""The ``outcome`` label of a message's final verdict; ``aborted`` is the other value."""

ABORTED = "aborted"
"""The ``outcome`` of a transaction that ended without a final reply (RSET, QUIT, lost)."""


def outcome_of(verdict: Verdict, tx: Transaction) -> str:
    """The ``outcome`` label for a transaction that ended with `verdict`.

    An accepted message that a plugin asked to hold (`Transaction.quarantine`) is quarantined.
    """
    if verdict.kind is VerdictKind.ACCEPT and tx.quarantined is not None:
        return OUTCOMES[VerdictKind.QUARANTINE]
    return OUTCOMES[verdict.kind]


class Metrics:
    """Every mailgate metric, in its own `registry`.

    Label children are cached per label tuple: `labels()` checks and locks on every call,
    and these are called several times per message.
    """

    def __init__(self) -> None:
        self.activity: Activity | None = None
        """Told each outcome and verdict too, when the console is on (its overview)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.plugin_calls = Counter(
            "mailgate_plugin_calls",
            "Plugin hook calls, by how they went (ok, skipped by `when`, failed).",
            ["plugin", "hook", "status"],
            registry=r,
        )
        self.plugin_verdicts = Counter(
            "mailgate_plugin_verdicts",
            "Verdicts plugins returned, by kind (reject, tempfail, discard, ...).",
            ["plugin", "hook", "verdict"],
            registry=r,
        )
        self.plugin_seconds = Histogram(
            "mailgate_plugin_call_seconds",
            "Wall time of plugin hook calls that ran (ok or failed).",
            ["plugin", "hook"],
            buckets=CALL_SECONDS_BUCKETS,
            registry=r,
        )
        self.messages = Counter(
            "mailgate_messages",
            "Transactions by final outcome.",
            ["ingress", "listener", "outcome"],
            registry=r,
        )
        self.message_size = Histogram(
            "mailgate_message_size_bytes",
            "Size of messages whose data was received, as they would be sent on.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.sessions = Counter(
            "mailgate_sessions", "Client sessions started.", ["ingress", "listener"], registry=r
        )
        self.sessions_active = Gauge(
            "mailgate_sessions_active",
            "Client sessions open now.",
            ["ingress", "listener"],
            registry=r,
        )
        self.downstream_errors = Counter(
            "mailgate_downstream_errors",
            "Downstream failures: unreachable or lost (unavailable), timed out, or an error.",
            ["downstream", "kind"],
            registry=r,
        )
        self.reloads = Counter(
            "mailgate_config_reloads",
            "SIGHUP reloads, by result (ok, refused).",
            ["result"],
            registry=r,
        )
        build = Gauge(
            "mailgate_build_info", "Always 1; the version is a label.", ["version"], registry=r
        )
        build.labels(__version__).set(1)
        self._calls: dict[tuple[str, str, CallStatus], Counter] = {}
        self._verdicts: dict[tuple[str, str, VerdictKind], Counter] = {}
        self._seconds: dict[tuple[str, str], Histogram] = {}
        self._messages: dict[tuple[str, str, str], Counter] = {}
        self._sessions: dict[tuple[str, str], tuple[Counter, Gauge]] = {}
        self.refreshers: list[Callable[[], Awaitable[None]]] = []
        """Awaited before each scrape is answered: gauges read from elsewhere (the queue's
        depth from the store). Each bounds its own time and keeps old values on failure."""

    async def refresh(self) -> None:
        """Bring the gauges that are read on demand up to date (see `refreshers`)."""
        for refresher in self.refreshers:
            await refresher()

    # -- plugin calls (the pipeline observer) -----------------------------------------------------

    def __call__(self, call: HookCall, session: Session, tx: Transaction | None) -> None:
        """Count one plugin call, its time and its verdict (a pipeline `Observer`)."""
        key = (call.plugin, call.hook, call.status)
        calls = self._calls.get(key)
        if calls is None:
            calls = self._calls[key] = self.plugin_calls.labels(*key[:2], call.status.value)
        calls.inc()
        if call.status is CallStatus.SKIPPED:
            return
        hook = key[:2]
        seconds = self._seconds.get(hook)
        if seconds is None:
            seconds = self._seconds[hook] = self.plugin_seconds.labels(*hook)
        seconds.observe(call.seconds)
        if isinstance(call.result, Verdict):
            if self.activity is not None:
                self.activity.verdict(call.plugin, call.result.kind.value)
            vkey = (call.plugin, call.hook, call.result.kind)
            verdicts = self._verdicts.get(vkey)
            if verdicts is None:
                verdicts = self._verdicts[vkey] = self.plugin_verdicts.labels(
                    *hook, call.result.kind.value
                )
            verdicts.inc()

    # -- what the ingress modules report ----------------------------------------------------------

    def message(self, session: Session, tx: Transaction, verdict: Verdict, size: int) -> None:
        """Count a transaction that ended with `verdict`; `size` < 0: no data (or withheld)."""
        self._count_message(session, outcome_of(verdict, tx))
        if size >= 0:
            self.message_size.observe(size)

    def downstream_error(self, downstream: str, kind: str) -> None:
        """The downstream could not be reached, failed or timed out (`kind`)."""
        self.downstream_errors.labels(downstream, kind).inc()

    def aborted(self, session: Session) -> None:
        """Count a transaction that ended without a final reply."""
        self._count_message(session, ABORTED)

    def _count_message(self, session: Session, outcome: str) -> None:
        if self.activity is not None:
            self.activity.outcome(outcome)
        key = (session.ingress, session.listener, outcome)
        counter = self._messages.get(key)
        if counter is None:
            counter = self._messages[key] = self.messages.labels(*key)
        counter.inc()

    def session_opened(self, session: Session) -> None:
        """A client session started."""
        started, active = self._session_metrics(session)
        started.inc()
        active.inc()

    def session_closed(self, session: Session) -> None:
        """A session `session_opened` counted has ended."""
        self._session_metrics(session)[1].dec()

    def _session_metrics(self, session: Session) -> tuple[Counter, Gauge]:
        key = (session.ingress, session.listener)
        children = self._sessions.get(key)
        if children is None:
            children = (self.sessions.labels(*key), self.sessions_active.labels(*key))
            self._sessions[key] = children
        return children

    def reloaded(self, ok: bool) -> None:
        """A SIGHUP reload was done (`ok`) or refused."""
        self.reloads.labels("ok" if ok else "refused").inc()

    def exposition(self) -> bytes:
        """Every metric in Prometheus's text format."""
        return generate_latest(self.registry)


def metrics_of(pipeline: Pipeline) -> Metrics | None:
    """The `Metrics` among `pipeline`'s observers (the app puts it there), or None.

    An ingress connection calls this once, when it takes its pipeline.
    """
    for observer in pipeline.observers:
        if isinstance(observer, Metrics):
            return observer
    return None


# -- the HTTP endpoint ----------------------------------------------------------------------------

_MAX_HEADER_LINES = 100
_REQUEST_TIMEOUT = 10.0
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
"""What `generate_latest` writes: Prometheus's text format, which every Prometheus reads."""
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.0 on `address` (``host:port``, or ``unix:/path``), served
    by the running loop; what it answers is `body`.

    One request per connection; anything but ``/metrics`` is 404, any method but GET and HEAD
    is 405.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._server: asyncio.Server | None = None

    async def body(self) -> bytes:
        """The exposition to answer with."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); 0 on a unix socket."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not started")
        if self.address.startswith("unix:"):
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start answering; ``unix:/path`` listens on a unix socket (a worker's, read
        by its master: see `mailgate.workers.metrics`)."""
        if self.address.startswith("unix:"):
            path = self.address.removeprefix("unix:")
            self._server = await asyncio.start_unix_server(self._serve, path=path)
            return
        host, port = split_host_port(self.address)
        self._server = await asyncio.start_server(
            self._serve, host or None, port, reuse_address=True
        )
        log.info("metrics listening", address=f"{host}:{self.port}")

    async def stop(self) -> None:
        """Stop answering."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(
            TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError
        ):
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                request = await _read_request(reader)
                writer.write(await self._response(request))
                await writer.drain()
        writer.close()

    async def _response(self, request: tuple[str, str] | None) -> bytes:
        if request is None:
            return _http(400, b"bad request\n")
        method, path = request
        if path.partition("?")[0] != "/metrics":
            return _http(404, b"not found: try /metrics\n")
        if method not in ("GET", "HEAD"):
            return _http(405, b"method not allowed\n", allow=True)
        body = await self.body()
        return _http(200, body, content_type=TEXT_FORMAT, head=method == "HEAD")


class MetricsServer(MetricsEndpoint):
    """The node's (or one worker's) `Metrics` on its ``/metrics``."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        super().__init__(address)
        self.metrics = metrics

    async def body(self) -> bytes:
        """The registry's exposition, its gauges refreshed first."""
        await self.metrics.refresh()
        return self.metrics.exposition()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, target) of an HTTP request, its headers read and ignored; None if malformed."""
    words = (await reader.readuntil(b"\n")).decode("latin-1").split()
    for _ in range(_MAX_HEADER_LINES):
        if not (await reader.readuntil(b"\n")).strip():
            break
    else:
        return None
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        return None
    return words[0], words[1]


def _http(
    code: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    allow: bool = False,
    head: bool = False,
) -> bytes:
    lines = [
        f"HTTP/1.0 {code} {_REASONS[code]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        lines.append("Allow: GET, HEAD")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head_bytes if head else head_bytes + body
