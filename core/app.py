"""`App`: what ``mailgate serve`` runs. Builds listeners, pipeline and egress from a `Config`.

SIGHUP re-reads the configuration and swaps the plugin chain (and the logging settings): new
sessions get the new chain, running ones keep theirs. A bad new configuration is refused and
logged, and the old one stays. Listener and relay settings take effect at the next start: the
``configuration reloaded`` line names the changed ones in ``restart_needed``, and a warning
follows. Plugins installed since start are found; a plugin whose code changed since it was
imported keeps running the old code, and is named in a warning (see `mailgate.reloading`).
SIGUSR1 wakes the queue's worker (``mailgate queue retry``). SIGTERM and SIGINT stop cleanly:
listeners close, open sessions get 421, pooled connections QUIT, and the queue (when
configured) finishes its deliveries in flight and releases its leases.
With ``[metrics] address`` set, Prometheus metrics are served from the same loop (a change of
address, like a listener's, takes effect at the next start).

Under workers (``[mailgate] workers``, `mailgate.workers`) an App is one worker: its master
bound the listeners' sockets (`sockets`), serves ``/metrics`` from the workers' own endpoints
(`metrics_path`), and tells it to reload and stop. Worker 1 alone delivers from the queue,
expires the quarantine and serves the console, so nothing is done twice on a node. SIGTERM then
drains: the listeners stop accepting and open sessions get ``drain_timeout`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from mailgate import preflight, reloading
from mailgate.config import ConfigError
from mailgate.console import Activity, ConsoleServer
from mailgate.console.views import QuarantineView, QueueView, ReportsView
from mailgate.console.web import Node
from mailgate.dns import keep_cache
from mailgate.egress import Egress
from mailgate.loader import Config, load_config
from mailgate.logging import Level, configure_logging, get_logger
from mailgate.metrics import Metrics, MetricsServer
from mailgate.pipeline import Observer, Pipeline
from mailgate.plugin import PluginContext
from mailgate.policy import PolicyListener
from mailgate.quarantine import Quarantine, QuarantineStore, StoredQuarantine
from mailgate.queue import Queue
from mailgate.queue.metrics import QueueMetrics
from mailgate.relay import RelayEgress
from mailgate.smtp.listener import SmtpListener
from mailgate.store import Store

log = get_logger("mailgate.app")


class Listener(Protocol):
    """What the app needs of a listener (SMTP, milter or policy)."""

    sock: socket.socket | None
    """A socket bound by a master, served instead of binding the listener's address."""

    @property
    def port(self) -> int:
        """The bound port."""
        ...

    async def start(self) -> None:
        """Start accepting connections."""
        ...

    async def stop(self) -> None:
        """Stop accepting and close sessions."""
        ...

    async def drain(self, timeout: float) -> None:
        """Stop accepting; wait up to `timeout` for open sessions to end."""
        ...


class App:
    """One running mailgate: its configuration, plugin chain, listeners and egress.

    `directory`, `listen` and `relay` are as for `mailgate.loader.load_config`; they are kept so
    `reload` reads the same place with the same overrides. `config`, if given, is what they
    were already loaded into (``mailgate serve`` reads it first to choose the event loop).
    """

    def __init__(
        self,
        directory: Path | str | None,
        *,
        listen: str | None = None,
        relay: str | None = None,
        milter: str | None = None,
        policy: str | None = None,
        configure_logs: bool = True,
        config: Config | None = None,
        log_level: Level | None = None,
        worker: int = 0,
        sockets: Mapping[int, socket.socket] | None = None,
        metrics_path: str | None = None,
    ) -> None:
        self.directory = directory
        self.listen = listen
        self.relay = relay
        self.milter = milter
        self.policy = policy
        self.configure_logs = configure_logs
        self.log_level = log_level
        """``serve --log-level``: wins over ``[logging] level``, at start and at each reload."""
        self.config: Config = config or load_config(
            directory, listen=listen, relay=relay, milter=milter, policy=policy
        )
        self.worker = worker
        """This process's number under a master (1 to N); 0: a single process, no master."""
        self.sockets: Mapping[int, socket.socket] = sockets or {}
        """Listening sockets from the master, by listener index (`config.listeners`)."""
        self.notify: Callable[[str], None] | None = None
        """How a worker answers its master: told ``ready`` once started, and the answer to
        each reload order (see `control`) or SIGHUP."""
        self.control: asyncio.StreamReader | None = None
        """A worker's orders from its master, a line each: ``prepare`` (answered ``prepared``
        or ``refused``), then ``commit`` (``reloaded``) or ``abort``."""
        self._prepared: tuple[Config, Pipeline] | None = None
        primary = worker <= 1
        self._apply_log_level(self.config)
        self.observers: list[Observer] = []
        """Told about every plugin call of every pipeline this app runs (metrics)."""
        self.metrics: Metrics | None = None
        """The app's metrics, when ``[metrics] address`` is set (also an observer)."""
        self.metrics_server: MetricsServer | None = None
        if self.config.metrics.address:
            self.metrics = Metrics()
            self.observers.append(self.metrics)
            address = f"unix:{metrics_path}" if metrics_path else self.config.metrics.address
            self.metrics_server = MetricsServer(self.metrics, address)
        self.pipeline: Pipeline = self.config.pipeline()
        self.pipeline.observers = self.observers
        self.egresses: dict[str, Egress] = {"relay": RelayEgress(self.config.relay)}
        """The ways out, by the name listeners choose them with (``egress = "relay"``)."""
        self.queue: Queue | None = None
        """The store-and-forward queue, when configured (``[queue]``, ``egress = "queue"``)."""
        if self.config.queue is not None:
            self.queue = Queue(
                self.config.store, self.config.queue, self.config.relay, dns=self.config.dns
            )
            self.egresses["queue"] = self.queue.egress
            if self.metrics is not None and primary:
                queue_metrics = QueueMetrics(self.metrics.registry, self.queue.store)
                self.queue.worker.on_delivery = queue_metrics.delivered
                self.metrics.refreshers.append(queue_metrics.refresh)
        self.quarantine: Quarantine = self._quarantine()
        self._expiring: asyncio.Task[None] | None = None
        self.console: ConsoleServer | None = None
        """The web console, when ``[console] address`` is set."""
        if self.config.console.address and primary:
            self.console = self._console()
        self.listeners: list[Listener] = []
        self.reloads = 0
        """Configurations successfully swapped in by `reload`."""
        self._running = reloading.start_settings(self.config)
        """The settings applied at start, which a reload cannot change."""
        self._installed = reloading.InstalledPlugins()
        self._plugin_code = reloading.PluginCode()
        self._plugin_code.record(self.config.chain)
        self._stopping = asyncio.Event()
        self._plugin_tasks: set[asyncio.Task[None]] = set()

    def plugin_context(self, pipeline: Pipeline | None = None) -> PluginContext:
        """What the plugins of `pipeline` (default: the current one) with work of their own
        are started with (`PluginContext`)."""
        pipeline = pipeline or self.pipeline
        queue = self.config.queue
        node = (queue.node_id if queue is not None else "") or socket.gethostname()
        registry = self.metrics.registry if self.metrics is not None else None
        return PluginContext(
            store=self.config.store,
            node=node,
            registry=registry,
            queue=queue is not None,
            plugins=tuple(p.instance for p in pipeline.plugins),
        )

    async def _start_plugins(self, pipeline: Pipeline) -> None:
        for p in pipeline.plugins:
            start = getattr(p.instance, "start", None)
            if callable(start):
                await start(self.plugin_context(pipeline))

    async def _stop_plugins(self, pipeline: Pipeline) -> None:
        for p in pipeline.plugins:
            stop = getattr(p.instance, "stop", None)
            if callable(stop):
                try:
                    await stop()
                except Exception as exc:
                    log.error("plugin stop failed", plugin=p.name, error=str(exc))

    async def _swap_plugins(self, old: Pipeline, new: Pipeline) -> None:
        try:
            await self._start_plugins(new)
        except Exception as exc:
            log.error("plugin start failed after reload", error=str(exc))
        await self._stop_plugins(old)

    def _apply_log_level(self, config: Config) -> None:
        if self.log_level is not None:
            config.logging.level = self.log_level

    def _quarantine(self) -> Quarantine:
        """The quarantine the configuration chose; in the store, it shares the queue's."""
        if self.config.quarantine.backend == "directory":
            return QuarantineStore(self.config.relay.quarantine_dir)
        node = (self.queue.node if self.queue is not None else "") or socket.gethostname()
        shared = self.queue.store if self.queue is not None else None
        return StoredQuarantine(self.config.store, self.config.quarantine, node, store=shared)

    def _console(self) -> ConsoleServer:
        """The console over this node; its overview counts what the metrics count."""
        activity = Activity()
        if self.metrics is None:
            self.metrics = Metrics()  # counted for the console; no /metrics without the address
            self.observers.append(self.metrics)
        self.metrics.activity = activity
        held = self.quarantine
        node = Node(
            pipeline=self.current_pipeline,
            activity=activity,
            quarantine=(
                QuarantineView(held, self.config.relay, queued=self.queue is not None)
                if isinstance(held, StoredQuarantine)
                else None
            ),
            queue=QueueView(self.queue.store) if self.queue is not None else None,
            node_name=self.queue.node if self.queue is not None else socket.gethostname(),
            reports=ReportsView(self._shared_store()) if self._reports_enabled() else None,
        )
        return ConsoleServer(self.config.console, node)

    def _reports_enabled(self) -> bool:
        return any(p.name == "reports" for p in self.config.chain)

    def _shared_store(self) -> Store:
        """The store the queue or the quarantine already use, else one of its own."""
        if self.queue is not None:
            return self.queue.store
        if isinstance(self.quarantine, StoredQuarantine):
            return self.quarantine.database
        return Store(self.config.store)

    async def _expire_quarantine(self, held: StoredQuarantine) -> None:
        """Every ``expire_interval``, delete what ``retention_days`` no longer keeps."""
        while True:
            await asyncio.sleep(self.config.quarantine.expire_interval)
            try:
                gone = await held.expire()
            except Exception as exc:
                log.warning("quarantine expiry failed", error=str(exc).splitlines()[0][:200])
                continue
            if gone:
                log.info("quarantine expired", messages=gone)

    def current_pipeline(self) -> Pipeline:
        """The chain new sessions get (what the listeners call per connection)."""
        return self.pipeline

    async def start(self) -> None:
        """Check what the configuration points at, configure logging, then start listening.

        Raises `ConfigError` naming the file and key of a listener (or ``metrics.address``)
        that cannot be bound, or of a certificate that does not load; what was already started
        is stopped again.
        """
        warnings = preflight.check(self.config, probe_ports=False)
        if self.configure_logs:
            configure_logging(self.config.logging)
        for warning in warnings:
            log.warning("configuration warning", problem=str(warning))
        try:
            await self._start_listening()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "started",
            config=str(self.directory) if self.directory is not None else None,
            plugins=[p.name for p in self.pipeline.plugins],
            relay=self.config.relay.address.default,
            metrics=self.metrics_server.address if self.metrics_server is not None else None,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )

    async def _start_listening(self) -> None:
        if self.queue is not None:
            try:
                await self.queue.start(deliver=self.worker <= 1)
            except (OSError, SQLAlchemyError) as exc:
                source = preflight.core_source(self.config)
                url = self.config.store.redacted()
                reason = str(exc).splitlines()[0][:200]
                raise ConfigError(
                    source, "store.url", url, "a store mailgate can open", reason
                ) from exc
        expires = self.config.quarantine.retention_days and self.worker <= 1
        if isinstance(self.quarantine, StoredQuarantine) and expires:
            self._expiring = asyncio.create_task(
                self._expire_quarantine(self.quarantine), name="quarantine expiry"
            )
        if self.console is not None:
            try:
                await self.console.start()
            except (OSError, SystemExit) as exc:
                source = preflight.core_source(self.config)
                address = self.config.console.address
                error = exc if isinstance(exc, OSError) else OSError(str(exc))
                raise _cannot_listen(source, "console.address", address, error) from None
        try:
            await self._start_plugins(self.pipeline)
        except (OSError, SQLAlchemyError) as exc:
            source = preflight.core_source(self.config)
            reason = str(exc).splitlines()[0][:200]
            url = self.config.store.redacted()
            raise ConfigError(
                source, "store.url", url, "a store mailgate can open", reason
            ) from exc
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except OSError as exc:
                source = preflight.core_source(self.config)
                address = self.config.metrics.address
                raise _cannot_listen(source, "metrics.address", address, exc) from None
        for index, lc in enumerate(self.config.listeners):
            listener = self._listener(lc.type, lc.settings)
            if index in self.sockets:
                listener.sock = self.sockets[index]
            try:
                await listener.start()
            except OSError as exc:
                address = lc.settings.address
                raise _cannot_listen(lc.source, lc.setting("address"), address, exc) from None
            self.listeners.append(listener)

    def _listener(self, kind: str, settings: Any) -> Listener:
        if kind == "smtp":
            if not settings.hostname:
                settings.hostname = self.config.mailgate.hostname
            return SmtpListener(
                settings,
                pipeline=self.current_pipeline,
                egress=self.egresses[settings.egress],
                quarantine=self.quarantine,
            )
        if kind == "policy":
            return PolicyListener(settings, pipeline=self.current_pipeline)
        milter = importlib.import_module("mailgate.milter")
        listener: Listener = milter.MilterListener(settings, pipeline=self.current_pipeline)
        return listener

    @property
    def ports(self) -> list[int]:
        """The bound port of each listener, in configuration order."""
        return [listener.port for listener in self.listeners]

    def reload(self) -> bool:
        """Re-read the configuration and swap the plugin chain; False (and logged) if it is bad.

        Logs ``configuration reloaded`` with the keys that need a restart (`restart_needed`), a
        warning naming them, and one naming each plugin whose code changed since it was loaded.
        """
        prepared = self.prepare_reload()
        if prepared is None:
            return False
        self.commit_reload(prepared)
        return True

    def prepare_reload(self) -> tuple[Config, Pipeline] | None:
        """The first half of `reload`: read and check the configuration and build its chain,
        swapping nothing; None (and logged, and counted) when it is bad. A master asks every
        worker to prepare before it tells any to commit (all swap, or none does)."""
        self._installed.refresh()
        try:
            config = load_config(
                self.directory,
                listen=self.listen,
                relay=self.relay,
                milter=self.milter,
                policy=self.policy,
            )
            keep_cache(self.config.dns, config.dns)
            self._apply_log_level(config)
            pipeline = config.pipeline()
            pipeline.observers = self.observers
        except ConfigError as exc:
            log.error("configuration refused, keeping the old one", error=str(exc))
            if self.metrics is not None:
                self.metrics.reloaded(False)
            return None
        return config, pipeline

    def commit_reload(self, prepared: tuple[Config, Pipeline]) -> None:
        """The second half of `reload`: swap in what `prepare_reload` built."""
        config, pipeline = prepared
        old, self.config, self.pipeline = self.pipeline, config, pipeline
        with contextlib.suppress(RuntimeError):  # no running loop: nothing was started
            task = asyncio.get_running_loop().create_task(self._swap_plugins(old, pipeline))
            self._plugin_tasks.add(task)
            task.add_done_callback(self._plugin_tasks.discard)
        for listener in self.listeners:
            if isinstance(listener, SmtpListener):
                listener.reload_tls()
        if self.configure_logs:
            configure_logging(config.logging)
        self.reloads += 1
        if self.metrics is not None:
            self.metrics.reloaded(True)
        restart = reloading.restart_needed(self._running, reloading.start_settings(config))
        changed = self._plugin_code.changed(config.chain)
        self._plugin_code.record(config.chain)
        log.info(
            "configuration reloaded",
            plugins=[p.name for p in pipeline.plugins],
            restart_needed=restart,
        )
        for warning in preflight.misnamed_files(config.directory):
            log.warning("configuration warning", problem=str(warning))
        if restart:
            log.warning("changed settings take effect only after a restart", keys=restart)
        for name, files in changed.items():
            log.warning(
                "plugin code changed since it was loaded; the old code runs until a restart",
                plugin=name,
                files=files,
            )

    def wake_queue(self) -> None:
        """Look for due messages now (SIGUSR1: ``mailgate queue retry``, ``flush``, ``release``)."""
        if self.queue is not None:
            self.queue.worker.wake()

    async def _obey(self, control: asyncio.StreamReader) -> None:
        """Carry out the master's two-phase reloads (see `control`) until the pipe closes."""
        while line := await control.readline():
            order = line.strip()
            if order == b"prepare":
                self._prepared = self.prepare_reload()
                answer = "prepared" if self._prepared is not None else "refused"
            elif order == b"commit" and self._prepared is not None:
                self.commit_reload(self._prepared)
                self._prepared, answer = None, "reloaded"
            else:  # abort, or a commit with nothing prepared
                self._prepared, answer = None, "aborted"
            if self.notify is not None:
                self.notify(answer)

    def _hangup(self) -> None:
        ok = self.reload()
        if self.notify is not None:
            self.notify("reloaded" if ok else "refused")

    async def drain(self) -> None:
        """Stop accepting on every listener, then give open sessions ``drain_timeout``."""
        timeout = self.config.mailgate.drain_timeout
        log.info("draining", sessions_timeout=timeout)
        await asyncio.gather(*(listener.drain(timeout) for listener in self.listeners))

    def request_stop(self) -> None:
        """Ask `run` to stop (what SIGTERM and SIGINT do)."""
        self._stopping.set()

    async def stop(self) -> None:
        """Stop the listeners, close the downstream connections, then the metrics endpoint."""
        for listener in self.listeners:
            await listener.stop()
        self.listeners.clear()
        for egress in self.egresses.values():
            await egress.close()
        if self.console is not None:
            await self.console.stop()
        if self._expiring is not None:
            self._expiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiring
            self._expiring = None
        if isinstance(self.quarantine, StoredQuarantine):
            await self.quarantine.close()
        for task in list(self._plugin_tasks):
            await task
        await self._stop_plugins(self.pipeline)
        if self.queue is not None:
            await self.queue.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        log.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), then stop."""
        loop = asyncio.get_running_loop()
        await self.start()
        obeying = None
        if self.control is not None:
            obeying = asyncio.create_task(self._obey(self.control), name="master's orders")
        if self.notify is not None:
            self.notify("ready")
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self.wake_queue)
        try:
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a late wake must not end the stop
            if obeying is not None:
                obeying.cancel()
            if self.worker:
                await self.drain()
            await self.stop()


def _cannot_listen(source: str, key: str, address: str, exc: OSError) -> ConfigError:
    # asyncio's message repeats the address; the errno's text is the reason.
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConfigError(source, key, address, "an address this host can listen on", reason)
