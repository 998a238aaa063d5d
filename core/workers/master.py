"""`Master`: what ``mailgate serve`` runs with ``workers`` above 1.

The master binds the listeners' sockets once (`mailgate.workers.sockets`), starts the workers
(`mailgate.workers.child`, one `App` each) and then only supervises:

- a worker that dies is started again (at once, then backing off to 5 s while it keeps dying
  within seconds of its start); it gets the same sockets back;
- SIGHUP: the master reads and checks the configuration first; a bad one is refused, logged
  with its file, key and reason, and no worker is told (all of them keep the old chain). A good
  one is reloaded in two phases: every worker reads it and builds the new chain (``prepare``);
  only when all have does the master tell them to swap (``commit``), else to drop it
  (``abort``). Every worker swaps, or none does;
- SIGTERM, SIGINT: every worker drains (stops accepting, lets open sessions finish within
  ``drain_timeout``) and stops; the master waits for them, then closes the sockets;
- SIGUSR1 (``mailgate queue retry``) goes to worker 1, which delivers the queue.

It also serves what the workers share: ``/metrics`` summed over the workers
(`mailgate.workers.metrics`) and the ``limits`` counters of the node
(`mailgate.workers.counters`), both over unix sockets in a private node directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, generate_latest

from mailgate import reloading
from mailgate.config import ConfigError
from mailgate.loader import Config, load_config
from mailgate.logging import Level, configure_logging, get_logger, name_process
from mailgate.plugins.limits.node_counters import ENVIRONMENT as NODE_COUNTERS
from mailgate.workers.counters import CounterServer
from mailgate.workers.metrics import NodeMetricsServer
from mailgate.workers.sockets import NodeSockets, bind_all

log = get_logger("mailgate.workers")

RELOAD_TIMEOUT = 30.0
"""How long the master waits for each worker to answer a SIGHUP."""
STOP_GRACE = 15.0
"""Past ``drain_timeout``, how long a stopping worker has before it is killed."""
MAX_BACKOFF = 5.0


class StartError(Exception):
    """A worker did not start (its own error is on standard error)."""


@dataclass(slots=True)
class WorkerProcess:
    """One running worker: its process and the lines it sent on its notify pipe."""

    number: int
    process: asyncio.subprocess.Process
    control: int
    """The write end of the worker's order pipe (`App.control`)."""
    lines: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    ready: bool = False

    def order(self, word: str) -> bool:
        """Send an order line; False when the worker is gone."""
        try:
            os.write(self.control, word.encode() + b"\n")
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the order pipe (the worker has ended)."""
        with contextlib.suppress(OSError):
            os.close(self.control)


class Master:
    """Runs `workers` workers over the configuration in `directory` (see the module docstring).

    `addresses` are ``serve``'s ``--listen``, ``--relay``, ``--milter`` and ``--policy``; they
    are passed on to every worker. `config` is what they were already loaded into.
    """

    def __init__(
        self,
        directory: Path | None,
        addresses: dict[str, str | None],
        config: Config,
        *,
        log_level: Level | None = None,
    ) -> None:
        self.directory = directory
        self.addresses = addresses
        self.config = config
        self.log_level = log_level
        self.count = config.mailgate.worker_count()
        self.workers: dict[int, WorkerProcess] = {}
        self.node_dir = ""
        self.sockets = NodeSockets()
        self.counters: CounterServer | None = None
        self.metrics: NodeMetricsServer | None = None
        self.reloads = 0
        """Configurations every worker swapped in."""
        self._stopping = asyncio.Event()
        self._keepers: list[asyncio.Task[object]] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._installed = reloading.InstalledPlugins()
        self._reloading = asyncio.Lock()
        self._registry = CollectorRegistry()
        self._reloads = Counter(
            "mailgate_config_reloads",
            "SIGHUP reloads, by result (ok, refused).",
            ["result"],
            registry=self._registry,
        )

    def _configure_logs(self, config: Config) -> None:
        if self.log_level is not None:
            config.logging.level = self.log_level
        configure_logging(config.logging)

    async def run(self) -> None:
        """Start the workers, supervise them until SIGTERM or SIGINT, then stop them all.

        Raises `ConfigError` when a listener cannot be bound, `StartError` when a worker does
        not start.
        """
        name_process("master")
        self._configure_logs(self.config)
        loop = asyncio.get_running_loop()
        self.node_dir = tempfile.mkdtemp(prefix="mailgate-node-")
        try:
            await self._start()
            loop.add_signal_handler(signal.SIGHUP, self._hangup)
            loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
            loop.add_signal_handler(signal.SIGINT, self._stopping.set)
            loop.add_signal_handler(signal.SIGUSR1, self._wake_queue)
            log.info(
                "started",
                config=str(self.directory) if self.directory is not None else None,
                workers=self.count,
                worker_pids=[w.process.pid for w in self.workers.values()],
                sockets=self.config.mailgate.worker_sockets,
                ports=self.sockets.ports,
                metrics=self.config.metrics.address or None,
            )
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            await self._stop()

    async def _start(self) -> None:
        mode = self.config.mailgate.worker_sockets
        self.sockets = bind_all(self.config, self.count, mode)
        self.counters = CounterServer(os.path.join(self.node_dir, "counters.sock"))
        await self.counters.start()
        if self.config.metrics.address:
            self.metrics = NodeMetricsServer(
                self.config.metrics.address, self._metrics_paths, self._own_metrics
            )
            try:
                await self.metrics.start()
            except OSError as exc:
                from mailgate import preflight

                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ConfigError(
                    preflight.core_source(self.config),
                    "metrics.address",
                    self.config.metrics.address,
                    "an address this host can listen on",
                    reason,
                ) from None
        started = await asyncio.gather(
            *(self._spawn(n) for n in range(1, self.count + 1)), return_exceptions=True
        )
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            raise StartError(str(failed[0]))
        for n in range(1, self.count + 1):
            self._keepers.append(asyncio.create_task(self._keep(n), name=f"worker {n}"))

    def _own_metrics(self) -> bytes:
        return generate_latest(self._registry)

    def _metrics_path(self, number: int) -> str:
        return os.path.join(self.node_dir, f"metrics-{number}.sock")

    def _metrics_paths(self) -> list[str]:
        return [self._metrics_path(n) for n, w in sorted(self.workers.items()) if w.ready]

    async def _spawn(self, number: int) -> WorkerProcess:
        """Start worker `number` and wait until it says ``ready`` (StartError if it ends)."""
        read_fd, write_fd = os.pipe()
        control_read, control_write = os.pipe()
        os.set_inheritable(control_write, False)
        sockets = self.sockets.for_worker(number)
        argv = [
            sys.executable,
            "-m",
            "mailgate.workers.child",
            "--worker",
            str(number),
            "--notify-fd",
            str(write_fd),
            "--control-fd",
            str(control_read),
        ]
        argv += [f"--socket={index}:{sock.fileno()}" for index, sock in sockets.items()]
        if self.config.metrics.address:
            argv += ["--metrics-path", self._metrics_path(number)]
        if self.directory is not None:
            argv += ["--config", str(self.directory)]
        if self.log_level is not None:
            argv += ["--log-level", self.log_level]
        argv += [f"--{k}={v}" for k, v in self.addresses.items() if v is not None]
        env = {**os.environ, NODE_COUNTERS: self.counters.path if self.counters else ""}
        fds = (write_fd, control_read, *(s.fileno() for s in sockets.values()))
        try:
            proc = await asyncio.create_subprocess_exec(*argv, pass_fds=fds, env=env)
        except BaseException:
            os.close(control_write)
            raise
        finally:
            os.close(write_fd)
            os.close(control_read)
        worker = WorkerProcess(number, proc, control_write)
        reading = asyncio.create_task(self._read_notices(worker, read_fd))
        self._readers.add(reading)
        reading.add_done_callback(self._readers.discard)
        self.workers[number] = worker
        ended = asyncio.create_task(proc.wait())
        first = asyncio.create_task(worker.lines.get())
        await asyncio.wait({ended, first}, return_when=asyncio.FIRST_COMPLETED)
        if first.done() and first.result() == "ready":
            ended.cancel()
            worker.ready = True
            return worker
        first.cancel()
        reading.cancel()
        code = await proc.wait()
        worker.close()
        raise StartError(f"worker {number} ended with status {code} before it was ready")

    async def _read_notices(self, worker: WorkerProcess, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                await worker.lines.put(line.decode(errors="replace").strip())
        finally:
            transport.close()

    async def _keep(self, number: int) -> None:
        """Start worker `number` again whenever it dies, until the master stops."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            worker = self.workers[number]
            started = loop.time()
            code = await worker.process.wait()
            worker.ready = False
            worker.close()
            if self._stopping.is_set():
                return
            failures = failures + 1 if loop.time() - started < 10 else 0
            delay = min(0.1 * 2 ** (failures - 1), MAX_BACKOFF) if failures else 0.0
            log.error("worker died; starting it again", number=number, status=code, delay=delay)
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return
                try:
                    worker = await self._spawn(number)
                    break
                except (StartError, OSError) as exc:
                    failures += 1
                    delay = min(0.1 * 2 ** (failures - 1), MAX_BACKOFF)
                    log.error("worker did not start", number=number, error=str(exc), delay=delay)
            log.info("worker started again", number=number, pid=worker.process.pid)

    def _wake_queue(self) -> None:
        worker = self.workers.get(1)
        if worker is not None and worker.process.returncode is None:
            worker.process.send_signal(signal.SIGUSR1)

    def _hangup(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._keepers.append(task)

    async def reload(self) -> bool:
        """Check the configuration, then have every worker swap its chain (see the module
        docstring); True when every worker did. Reloads run one at a time."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> bool:
        self._installed.refresh()  # a plugin installed since start is found, as in a worker
        try:
            config = load_config(self.directory, **self.addresses)
            config.pipeline()
        except ConfigError as exc:
            log.error("configuration refused, keeping the old one in every worker", error=str(exc))
            self._reloads.labels("refused").inc()
            return False
        running = [w for w in self.workers.values() if w.ready and w.process.returncode is None]
        prepared = await self._ask(running, "prepare")
        if prepared != {w.number: "prepared" for w in running}:
            await self._ask(running, "abort")
            self._reloads.labels("refused").inc()
            log.error(
                "configuration refused by a worker, keeping the old one in every worker",
                answers=prepared,
            )
            return False
        committed = await self._ask(running, "commit")
        self._configure_logs(config)
        self.config = config
        swapped = [n for n, answer in committed.items() if answer == "reloaded"]
        if len(swapped) == len(running):
            self.reloads += 1
            self._reloads.labels("ok").inc()
            log.info("configuration reloaded in every worker", workers=swapped)
            return True
        self._reloads.labels("refused").inc()
        log.error(
            "configuration reload incomplete: a worker ended while the others swapped",
            answers=committed,
        )
        return False

    async def _ask(self, workers: list[WorkerProcess], order: str) -> dict[int, str]:
        """Send `order` to every worker of `workers`; each one's answer ("gone" when it ended,
        "no answer" past `RELOAD_TIMEOUT`)."""
        for worker in workers:
            while not worker.lines.empty():
                worker.lines.get_nowait()
        sent = [worker.order(order) for worker in workers]

        async def answer(worker: WorkerProcess, ok: bool) -> str:
            if not ok:
                return "gone"
            try:
                return await asyncio.wait_for(worker.lines.get(), RELOAD_TIMEOUT)
            except TimeoutError:
                return "no answer"

        answers = await asyncio.gather(
            *(answer(w, ok) for w, ok in zip(workers, sent, strict=True))
        )
        return {w.number: a for w, a in zip(workers, answers, strict=True)}

    async def _stop(self) -> None:
        for task in self._keepers:
            task.cancel()
        running = [w for w in self.workers.values() if w.process.returncode is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        grace = self.config.mailgate.drain_timeout + STOP_GRACE
        for worker in running:
            try:
                await asyncio.wait_for(worker.process.wait(), grace)
            except TimeoutError:
                log.error("worker did not stop; killed", number=worker.number)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.counters is not None:
            await self.counters.stop()
        self.sockets.close()
        for worker in self.workers.values():
            worker.close()
        if self.node_dir:
            shutil.rmtree(self.node_dir, ignore_errors=True)
        log.info("stopped", workers=self.count)
