"""The benchmark harness: systems under test, the load, the latency probe and the table.

Every system under test (SUT) runs in its own process on a port picked at run time and
relays to its own `smtp-sink` downstream (the "smtp-sink" system *is* an smtp-sink). The load is
`smtp-source` with one connection per message; the harness reads the SUT's CPU time and peak
RSS from /proc around each run, counts what reached the sink, and then times individual
transactions with its own small SMTP client (smtp-source prints no per-message latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SENDER = "a@x.test"
RECIPIENT = "b@y.test"
BENCH_DIR = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_COUNTER = re.compile(rb"mesg=(\d+)")


@dataclass(frozen=True, slots=True)
class BenchPlan:
    """What to run: the grid of sizes and session counts, and how hard to push each cell."""

    sizes_kib: tuple[int, ...] = (1, 10, 100)
    sessions: tuple[int, ...] = (1, 20)
    target_seconds: float = 2.5
    min_messages: int = 50
    max_messages: int = 8000
    probe_messages: int = 300
    repeats: int = 3
    fixed_messages: int | None = None
    """When set, every run sends exactly this many messages (no pilot run to size it)."""

    @classmethod
    def full(cls) -> BenchPlan:
        """The full benchmark: medians of three runs of a few seconds each."""
        return cls()

    @classmethod
    def quick(cls) -> BenchPlan:
        """One shorter run per cell, for a first look."""
        return cls(target_seconds=1.0, probe_messages=80, repeats=1)

    @classmethod
    def smoke(cls) -> BenchPlan:
        """A few seconds in all, to prove that every system relays every message."""
        return cls(fixed_messages=20, probe_messages=10, repeats=1)


@dataclass(slots=True)
class Measurement:
    """One system at one message size and session count (medians over the repeats)."""

    system: str
    size_kib: int
    sessions: int
    messages: int
    rate: float
    """Messages per second over the smtp-source run."""
    p50_ms: float
    p99_ms: float
    cpu: float
    """User+system CPU seconds of the SUT's processes divided by wall time (1.0 = one core)."""
    peak_rss_mib: float
    """Largest VmHWM of the SUT's processes over the cell, summed over its process tree."""
    sent: int
    delivered: int
    errors: list[str] = field(default_factory=list)
    cpu_ms_per_msg: float = float("nan")
    """CPU milliseconds the SUT spent per message: steadier than msg/s on a shared machine."""
    rates: list[float] = field(default_factory=list)
    """msg/s of each repeat, in the order they ran."""
    p95_ms: float = float("nan")
    load_cpu_ms_per_msg: float = float("nan")
    """CPU milliseconds per message of the load generator on the same machine: smtp-source
    and the system's smtp-sink (what is left of the cores for the system under test)."""

    @property
    def ok(self) -> bool:
        """Whether every message sent reached the sink and nothing failed."""
        return self.sent == self.delivered and not self.errors


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_banner(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until an SMTP server on `port` greets with 220; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
        ):
            if sock.recv(512).startswith(b"220"):
                sock.sendall(b"QUIT\r\n")
                return
        time.sleep(0.05)
    raise RuntimeError(f"no 220 banner on port {port} after {timeout} s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process we started, by its own PID: SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (pre-forking servers count as one system)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(_stat_fields(int(entry.name))[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _stat_fields(pid: int) -> list[str]:
    # The command name in /proc/PID/stat may contain spaces: split after its closing paren.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds used so far by `pid` and its descendants, those that have
    exited included: a reaped child's time is in its parent's cutime/cstime (Postfix's master
    reaps each smtpd after 100 connections, and its time would otherwise vanish)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat_fields(member)
            total += sum(int(value) for value in fields[11:15])
    return total / CLOCK_TICKS


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM of `pid` and its descendants, so the next reading is this run's peak."""
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of `pid` and its descendants, summed, in MiB."""
    total_kib = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


class SmtpSink:
    """An `smtp-sink` process that counts transactions (`-c`) and may dump them (`-d`)."""

    def __init__(self, workdir: Path, name: str, *, dump: bool) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True)
        self.port = free_port()
        self.dump_dir = self.workdir / "dump" if dump else None
        self.counter_file = self.workdir / "counter"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the sink and wait for its banner."""
        args = [SMTP_SINK, "-u", "nobody", "-c"]
        if self.dump_dir is not None:
            self.dump_dir.mkdir()
            shutil.chown(self.dump_dir, user="nobody")
            args += ["-d", f"{self.dump_dir}/%H%M%S."]
        args += [f"127.0.0.1:{self.port}", "256"]
        with self.counter_file.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait_for_banner(self.port, self.proc)

    @property
    def pid(self) -> int:
        """PID of the running sink."""
        assert self.proc is not None, "sink not started"
        return self.proc.pid

    def count(self) -> int:
        """Transactions the sink has completed so far ("." received)."""
        if self.dump_dir is not None:
            return sum(1 for _ in self.dump_dir.iterdir())
        found = _COUNTER.findall(self.counter_file.read_bytes())
        return int(found[-1]) if found else 0

    def messages(self) -> list[bytes]:
        """The dumped transactions (only with dump enabled)."""
        assert self.dump_dir is not None, "sink started without a dump directory"
        return [path.read_bytes() for path in sorted(self.dump_dir.iterdir())]

    def stop(self) -> None:
        """Stop the sink by its PID."""
        if self.proc is not None:
            stop_process(self.proc)


@dataclass(slots=True)
class System:
    """One system under test: a name, how to start it, and where its messages end up."""

    name: str
    command: Callable[[int, SmtpSink, Path], list[str]]
    """Builds the command line from the listening port, the downstream sink and a work dir."""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    sink: SmtpSink | None = None
    """Where the system's messages end up (and are counted)."""
    own_sink: SmtpSink | None = None
    """The sink this system started for itself, and stops with itself."""
    log: Path | None = None
    drain_timeout: float = 10.0
    """Seconds to wait for the sink to have every message after a run (a queue delivers
    after its 250, so it may still be draining)."""

    def start(
        self, workdir: Path, downstream: SmtpSink | None = None, *, dump: bool = False
    ) -> None:
        """Start the system on a fresh port, relaying to `downstream` (started by the caller).

        Without `downstream` the system gets a sink of its own, which it also stops, so that
        what each system delivered can be counted and read apart from the others.
        """
        if downstream is None:
            self.own_sink = downstream = SmtpSink(workdir, f"sink-{self.name}", dump=dump)
            downstream.start()
        self.port, self.sink = free_port(), downstream
        self.log = workdir / f"{self.name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(self.port, downstream, workdir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
        try:
            wait_for_banner(self.port, self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}\n{self.log_tail()}") from exc

    @property
    def pid(self) -> int:
        """PID of the running system."""
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        """The end of the system's stdout/stderr, for error messages."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the system, then its sink, each by its PID."""
        if self.proc is not None:
            stop_process(self.proc)
        if self.own_sink is not None:
            self.own_sink.stop()


class SinkSystem(System):
    """smtp-sink itself as the system under test: the ceiling the others are measured against."""

    def start(
        self, workdir: Path, downstream: SmtpSink | None = None, *, dump: bool = False
    ) -> None:
        """Start the sink (`downstream` is ignored); it counts its own messages."""
        self.sink = self.own_sink = SmtpSink(workdir, f"sink-{self.name}", dump=dump)
        self.sink.start()
        self.port, self.proc = self.sink.port, self.sink.proc


class PostfixSystem(System):
    """Postfix 3.7 accepting into its own queue (it fsyncs each queue file before its 250)
    and relaying to the sink: what queue mode is measured against. A private instance of
    `tests.peers.postfix.Postfix` (its test access rules included); its CPU and memory are
    those of the master and every child (smtpd, cleanup, qmgr, smtp, ...)."""

    def start(
        self, workdir: Path, downstream: SmtpSink | None = None, *, dump: bool = False
    ) -> None:
        """Start the instance relaying to `downstream` (or to a sink of its own)."""
        from tests.peers.postfix import Postfix

        if downstream is None:
            self.own_sink = downstream = SmtpSink(workdir, f"sink-{self.name}", dump=dump)
            downstream.start()
        self.sink = downstream
        instance = Postfix(
            workdir / self.name,
            relayhost=("127.0.0.1", downstream.port),
            main_cf=self.main_cf_overrides(),
        )
        self.instance = instance.start()
        assert instance.daemon is not None
        self.port, self.proc = instance.port, instance.daemon.proc
        self.log = instance.maillog_path

    def main_cf_overrides(self) -> dict[str, str]:
        """main.cf settings on top of the test instance's (none: its test rules stay)."""
        return {}

    def stop(self) -> None:
        """Stop the master (and so its children), then the sink."""
        instance = getattr(self, "instance", None)
        if instance is not None:
            instance.stop()
        if self.own_sink is not None:
            self.own_sink.stop()


class OrdinaryPostfixSystem(PostfixSystem):
    """Postfix as a site runs it to relay: smtpd on a port, ``relayhost`` = the sink, its own
    queue, no milters and none of the test instance's access or header rules."""

    def main_cf_overrides(self) -> dict[str, str]:
        """Drop the test rules (sender/recipient access maps, header_checks)."""
        return {
            "smtpd_recipient_restrictions": "",
            "smtpd_sender_restrictions": "",
            "header_checks": "",
        }


def _haraka() -> System:
    from .haraka import haraka_system  # haraka.py builds on this module

    return haraka_system()


def minimal_relay(port: int, sink: SmtpSink, workdir: Path) -> list[str]:
    """Command line of the minimal aiosmtpd + pooled aiosmtplib relay."""
    return [
        sys.executable,
        str(BENCH_DIR / "minimal_relay.py"),
        "--listen",
        f"127.0.0.1:{port}",
        "--relay",
        f"127.0.0.1:{sink.port}",
    ]


def mailgate_executable() -> str:
    """The `mailgate` script next to the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "mailgate"
    if beside.exists():
        return str(beside)
    found = shutil.which("mailgate")
    if found is None:
        raise RuntimeError("mailgate is not installed: run `.venv/bin/pip install -e .`")
    return found


def mailgate(
    plugin_files: dict[str, str], core: str = "", *, workers: int = 1, sockets: str = "reuseport"
) -> Callable[[int, SmtpSink, Path], list[str]]:
    """Command builder for `mailgate serve` on a fresh config dir holding `plugin_files`;
    `core` is added to its ``mailgate.toml`` (``{config}`` is replaced by the dir). One
    process unless `workers` says more (then sharing the port as `sockets` says)."""

    def command(port: int, sink: SmtpSink, workdir: Path) -> list[str]:
        config = Path(tempfile.mkdtemp(prefix="conf-", dir=workdir))
        # Relay control keeps its default, which lets 127.0.0.0/8 relay.
        (config / "mailgate.toml").write_text(
            '[mailgate]\nhostname = "mailgate.bench.test"\n'
            + f'workers = {workers}\nworker_sockets = "{sockets}"\n'
            + core.replace("{config}", str(config))
            + os.environ.get("MAILGATE_BENCH_CONF", "")
        )
        for name, text in plugin_files.items():
            (config / name).write_text(text)
        return [
            mailgate_executable(),
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--relay",
            f"127.0.0.1:{sink.port}",
        ]

    return command


ADD_HEADER_CONF = """\
# One header-adding plugin: the cost of the plugin pipeline on every message.
plugin = "add_header"
name = "X-Bench"
value = "mailgate"
"""

QUEUE_CONF = """\
# Store and forward into SQLite (WAL, synchronous=FULL) in the run's work dir; delivered to
# the same sink (--relay). The 250 comes after the commit, not after the sink.
[store]
url = "sqlite:///{config}/queue.db"
[[listener]]
egress = "queue"
"""

QUEUE_PG_CONF = """\
# Store and forward into PostgreSQL 15 (fsync and synchronous_commit on, its defaults): the
# 250 comes after the transaction committed. Delivered to the same sink (--relay).
[store]
url = "{url}"
[[listener]]
egress = "queue"
"""


class PostgresQueueSystem(System):
    """`mailgate serve` in queue mode on a throwaway PostgreSQL cluster of its own (durable:
    fsync on). Its CPU and memory are mailgate's process only, not PostgreSQL's backends."""

    def start(
        self, workdir: Path, downstream: SmtpSink | None = None, *, dump: bool = False
    ) -> None:
        """Start PostgreSQL, make an empty database, then mailgate on it."""
        from tests.peers.postgres import Postgres

        self.postgres = Postgres(workdir / f"{self.name}-postgres", durable=True).start()
        url = self.postgres.create_database("bench")
        self.command = mailgate({}, QUEUE_PG_CONF.replace("{url}", url))
        super().start(workdir, downstream, dump=dump)

    def stop(self) -> None:
        """Stop mailgate and its sink, then PostgreSQL."""
        super().stop()
        postgres = getattr(self, "postgres", None)
        if postgres is not None:
            postgres.stop()


SYSTEMS: dict[str, Callable[[], System]] = {
    "smtp-sink": lambda: SinkSystem("smtp-sink", lambda port, sink, workdir: []),
    "minimal-relay": lambda: System("minimal-relay", minimal_relay),
    "mailgate": lambda: System("mailgate", mailgate({})),
    "mailgate-w2": lambda: System("mailgate-w2", mailgate({}, workers=2)),
    "mailgate-w2-shared": lambda: System(
        "mailgate-w2-shared", mailgate({}, workers=2, sockets="shared")
    ),
    "mailgate+header": lambda: System(
        "mailgate+header", mailgate({"10-add_header.toml": ADD_HEADER_CONF})
    ),
    "mailgate-queue": lambda: System(
        "mailgate-queue", mailgate({}, QUEUE_CONF), drain_timeout=60.0
    ),
    "mailgate-queue-pg": lambda: PostgresQueueSystem(
        "mailgate-queue-pg", lambda port, sink, workdir: [], drain_timeout=60.0
    ),
    "postfix-queue": lambda: PostfixSystem(
        "postfix-queue", lambda port, sink, workdir: [], drain_timeout=60.0
    ),
    "postfix": lambda: OrdinaryPostfixSystem(
        "postfix", lambda port, sink, workdir: [], drain_timeout=60.0
    ),
    "haraka": _haraka,
}
"""Every system the benchmark knows, in table order."""

DEFAULT_SYSTEMS = ("smtp-sink", "minimal-relay", "mailgate", "mailgate+header")


def run_smtp_source(port: int, sessions: int, messages: int, size: int) -> tuple[float, str]:
    """Send `messages` with smtp-source; return the wall time and any error output."""
    args = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    args += ["-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    error = ""
    if done.returncode != 0 or done.stderr:
        error = f"smtp-source exit {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}"
    return elapsed, error


def probe_message(size: int) -> bytes:
    """A message like smtp-source's: a few headers and `size` bytes of body, CRLF lines."""
    line = b"X" * 78 + b"\r\n"
    body = line * (size // len(line)) + b"Y" * (size % len(line))
    headers = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: probe\r\n\r\n".encode()
    return headers + body + (b"" if body.endswith(b"\r\n") else b"\r\n")


async def _reply(reader: asyncio.StreamReader, expect: bytes) -> None:
    # A reply may span several lines; the last one has a space after the code.
    while True:
        line = await reader.readline()
        if not line.startswith(expect):
            raise RuntimeError(f"expected {expect.decode()}, got {line!r}")
        if line[3:4] != b"-":
            return


async def timed_transaction(
    port: int, message: bytes, sender: str = SENDER, recipient: str = RECIPIENT
) -> float:
    """One connection, one message: seconds from connect to the 250 after end of data."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader, b"220")
        for command, expect in (
            (b"EHLO probe.bench.test\r\n", b"250"),
            (f"MAIL FROM:<{sender}>\r\n".encode(), b"250"),
            (f"RCPT TO:<{recipient}>\r\n".encode(), b"250"),
            (b"DATA\r\n", b"354"),
        ):
            writer.write(command)
            await _reply(reader, expect)
        writer.write(message + b".\r\n")
        await _reply(reader, b"250")
        elapsed = time.perf_counter() - started
        writer.write(b"QUIT\r\n")
        await _reply(reader, b"221")
        return elapsed
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def latency_probe(
    port: int,
    sessions: int,
    messages: int,
    size: int,
    *,
    message: bytes | None = None,
    sender: str = SENDER,
    recipient: str = RECIPIENT,
) -> list[float]:
    """Time `messages` transactions, `sessions` at a time; return each one's seconds.

    Each sends `message` (CRLF lines, not dot-stuffed), by default `probe_message(size)`."""
    data = probe_message(size) if message is None else message
    queue = iter(range(messages))
    timings: list[float] = []

    async def worker() -> None:
        for _ in queue:
            timings.append(await timed_transaction(port, data, sender, recipient))

    await asyncio.gather(*(worker() for _ in range(min(sessions, messages))))
    return timings


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (fraction 0.5 = median)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class _Run:
    messages: int
    seconds: float
    cpu: float
    cpu_ms_per_msg: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    peak_rss_mib: float
    sent: int
    delivered: int
    errors: list[str]
    load_cpu_ms_per_msg: float


def wait_for_count(sink: SmtpSink, expected: int, timeout: float = 10.0) -> int:
    """Poll the sink's counter until it reaches `expected` (or time runs out)."""
    deadline = time.monotonic() + timeout
    count = sink.count()
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = sink.count()
    return count


def measure_once(system: System, size_kib: int, sessions: int, messages: int, probe: int) -> _Run:
    """One load run and one latency probe of `system`, with CPU, RSS and delivery."""
    assert system.sink is not None
    size, errors = size_kib * 1024, []
    before = system.sink.count()
    reset_peak_rss(system.pid)
    cpu_before = cpu_seconds(system.pid)
    load_before = _children_cpu() + cpu_seconds(system.sink.pid)
    seconds, error = run_smtp_source(system.port, sessions, messages, size)
    # A queue answers before it delivers: its CPU for these messages includes the delivery.
    wait_for_count(system.sink, before + messages, system.drain_timeout)
    cpu_used = cpu_seconds(system.pid) - cpu_before
    load_used = _children_cpu() + cpu_seconds(system.sink.pid) - load_before
    errors += [error] if error else []
    timings: list[float] = []
    try:
        timings = asyncio.run(latency_probe(system.port, sessions, probe, size))
    except (OSError, RuntimeError) as exc:
        errors.append(f"latency probe: {exc}")
    sent = messages + probe
    delivered = wait_for_count(system.sink, before + sent, system.drain_timeout) - before
    if system.proc is not None and system.proc.poll() is not None:
        # Whatever answered on its port was not this system (a port taken from under it).
        errors.append(f"{system.name} exited with {system.proc.returncode}")
    return _Run(
        messages=messages,
        seconds=seconds,
        cpu=cpu_used / seconds,
        cpu_ms_per_msg=cpu_used * 1000 / messages,
        p50_ms=percentile(timings, 0.5) * 1000 if timings else float("nan"),
        p95_ms=percentile(timings, 0.95) * 1000 if timings else float("nan"),
        p99_ms=percentile(timings, 0.99) * 1000 if timings else float("nan"),
        peak_rss_mib=peak_rss_mib(system.pid),
        sent=sent,
        delivered=delivered,
        errors=errors,
        load_cpu_ms_per_msg=load_used * 1000 / messages,
    )


def _children_cpu() -> float:
    """User+system CPU seconds of this process's finished children (smtp-source runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def size_run(system: System, plan: BenchPlan, size_kib: int, sessions: int) -> tuple[int, int]:
    """How many messages make a run of about `plan.target_seconds`; also the pilot's count.

    The pilot run warms the system up (imports, pooled downstream connections) and its
    messages are counted by the caller like any other.
    """
    if plan.fixed_messages is not None:
        return plan.fixed_messages, 0
    pilot = max(50, sessions * 10)
    seconds, error = run_smtp_source(system.port, sessions, pilot, size_kib * 1024)
    if error:
        raise RuntimeError(f"{system.name}: pilot run failed: {error}\n{system.log_tail()}")
    wanted = int(pilot / seconds * plan.target_seconds)
    return max(plan.min_messages, min(plan.max_messages, wanted)), pilot


def combine(system: str, size_kib: int, sessions: int, runs: list[_Run]) -> Measurement:
    """Medians over repeated runs of one cell (peak RSS: the largest)."""
    return Measurement(
        system=system,
        size_kib=size_kib,
        sessions=sessions,
        messages=sum(run.messages for run in runs),
        rate=statistics.median(run.messages / run.seconds for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p95_ms=statistics.median(run.p95_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        cpu=statistics.median(run.cpu for run in runs),
        cpu_ms_per_msg=statistics.median(run.cpu_ms_per_msg for run in runs),
        rates=[run.messages / run.seconds for run in runs],
        peak_rss_mib=max(run.peak_rss_mib for run in runs),
        sent=sum(run.sent for run in runs),
        delivered=sum(run.delivered for run in runs),
        errors=[error for run in runs for error in run.errors],
        load_cpu_ms_per_msg=statistics.median(run.load_cpu_ms_per_msg for run in runs),
    )


@contextlib.contextmanager
def running_systems(names: Sequence[str], *, dump: bool) -> Iterator[list[System]]:
    """Start every named system with its own downstream sink; stop them all on exit."""
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # smtp-sink drops to nobody and must reach its dump dir
        systems = [SYSTEMS[name]() for name in names]
        try:
            for system in systems:
                system.start(workdir, dump=dump)
            yield systems
        finally:
            # stop() copes with a system that never (fully) started.
            for system in reversed(systems):
                system.stop()


def run_benchmark(
    plan: BenchPlan,
    names: Sequence[str] = DEFAULT_SYSTEMS,
    *,
    dump: bool = False,
    progress: Callable[[str], None] | None = None,
    inspect: Callable[[list[System]], None] | None = None,
) -> list[Measurement]:
    """Run every named system over the plan's grid, side by side, and return the cells.

    Within a cell the systems take turns (rotated each repeat), so slow drift of a shared
    machine hits all of them alike. `inspect` sees the running systems before they stop.
    """
    results: list[Measurement] = []
    with running_systems(names, dump=dump) as systems:
        for size_kib in plan.sizes_kib:
            for sessions in plan.sessions:
                results += _run_cell(systems, plan, size_kib, sessions, progress)
        if inspect is not None:
            inspect(systems)
    order = {name: index for index, name in enumerate(names)}
    results.sort(key=lambda m: (m.size_kib, m.sessions, order[m.system]))
    return results


def _run_cell(
    systems: list[System],
    plan: BenchPlan,
    size_kib: int,
    sessions: int,
    progress: Callable[[str], None] | None,
) -> list[Measurement]:
    counts, extra = {}, {}
    for system in systems:
        counts[system.name], extra[system.name] = size_run(system, plan, size_kib, sessions)
    runs: dict[str, list[_Run]] = {system.name: [] for system in systems}
    for repeat in range(plan.repeats):
        shift = repeat % len(systems)
        for system in systems[shift:] + systems[:shift]:
            run = measure_once(system, size_kib, sessions, counts[system.name], plan.probe_messages)
            runs[system.name].append(run)
            if progress is not None:
                progress(
                    f"{system.name:16} {size_kib:>4} KiB x{sessions:<3} "
                    f"{run.messages / run.seconds:9.1f} msg/s  {run.delivered}/{run.sent}"
                )
    return [combine(name, size_kib, sessions, cell) for name, cell in runs.items()]


def format_table(results: Sequence[Measurement]) -> str:
    """The results as a Markdown table, with each system's rate relative to the minimal relay."""
    baseline = {(m.size_kib, m.sessions): m.rate for m in results if m.system == "minimal-relay"}
    lines = [
        "| system | size | sessions | msg/s | vs minimal relay | p50 ms | p99 ms "
        "| CPU (cores) | CPU ms/msg | peak RSS MiB | delivered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in results:
        base = baseline.get((m.size_kib, m.sessions))
        ratio = f"{m.rate / base:.2f}" if base else "-"
        delivered = f"{m.delivered}/{m.sent}" + ("" if m.ok else " FAIL")
        lines.append(
            f"| {m.system} | {m.size_kib} KiB | {m.sessions} | {m.rate:,.0f} | {ratio} "
            f"| {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.cpu:.2f} | {m.cpu_ms_per_msg:.2f} "
            f"| {m.peak_rss_mib:.1f} "
            f"| {delivered} |"
        )
    return "\n".join(lines)


TARGETS = {10: 0.90, 100: 1.00}
"""Issue 2's targets: mailgate with no plugins, as a fraction of the minimal relay's rate."""


def format_targets(results: Sequence[Measurement], system: str = "mailgate") -> str:
    """How `system` compares with the minimal relay at the sizes that have a target.

    Two ratios per cell: by msg/s (what the target asks) and by CPU per message (minimal
    relay's ms / mailgate's ms), which other load on a shared machine disturbs far less.
    """
    cells = {(m.system, m.size_kib, m.sessions): m for m in results}
    lines = []
    for (name, size_kib, sessions), m in cells.items():
        base = cells.get(("minimal-relay", size_kib, sessions))
        if name != system or size_kib not in TARGETS or base is None:
            continue
        target = TARGETS[size_kib]
        by_rate = m.rate / base.rate
        by_cpu = base.cpu_ms_per_msg / m.cpu_ms_per_msg if m.cpu_ms_per_msg else float("nan")
        verdict = "met" if by_rate >= target else "MISSED"
        lines.append(
            f"{system} {size_kib} KiB x{sessions}: {by_rate:.2f} of the minimal relay's msg/s, "
            f"{by_cpu:.2f} by CPU per message (target >= {target:.2f}: {verdict})"
        )
    return "\n".join(lines)


COMPARE_SYSTEMS = ("smtp-sink", "postfix", "haraka", "mailgate-w2", "mailgate", "minimal-relay")
"""The systems a user would pick instead of mailgate, beside it (issue 14's one table)."""

COMPARE_PLAN = BenchPlan(sizes_kib=(1, 10), sessions=(20,))


def format_comparison(results: Sequence[Measurement]) -> str:
    """The comparison as a Markdown table: rate, p50/p95/p99 latency and CPU per message."""
    lines = [
        "| system | size | msg/s | p50 ms | p95 ms | p99 ms | CPU ms/msg | CPU (cores) "
        "| load generator CPU ms/msg | peak RSS MiB | delivered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in results:
        delivered = f"{m.delivered}/{m.sent}" + ("" if m.ok else " FAIL")
        lines.append(
            f"| {m.system} | {m.size_kib} KiB | {m.rate:,.0f} | {m.p50_ms:.2f} | {m.p95_ms:.2f} "
            f"| {m.p99_ms:.2f} | {m.cpu_ms_per_msg:.2f} | {m.cpu:.2f} "
            f"| {m.load_cpu_ms_per_msg:.2f} | {m.peak_rss_mib:.1f} | {delivered} |"
        )
    return "\n".join(lines)


COMPARE_TARGETS = {"postfix": 1.0, "haraka": 2.5}
"""Issue 14's targets: mailgate's msg/s as a multiple of each rival's, same run and cell."""

WORKERS_TARGET = ("mailgate-w2", "mailgate", 1.6)
"""Issue 14: two workers at least 1.6x one worker's msg/s, same run and cell."""


def workers_ceiling(two: Measurement, one: Measurement, cores: int) -> float:
    """The most `two` (N workers) can do against `one` (one worker) on a machine of `cores`
    that also runs the load generator: every core busy with the workers' and the load
    generator's CPU per message, against one worker's measured rate."""
    per_message = two.cpu_ms_per_msg + two.load_cpu_ms_per_msg
    if not per_message or not one.rate:
        return float("nan")
    return cores * 1000 / per_message / one.rate


def format_workers_target(results: Sequence[Measurement], cores: int | None = None) -> str:
    """Whether two workers meet `WORKERS_TARGET` against one, cell by cell, with the ceiling
    this machine puts on that ratio (`workers_ceiling`)."""
    two, one, target = WORKERS_TARGET
    cores = cores or os.cpu_count() or 1
    cells = {(m.system, m.size_kib, m.sessions): m for m in results}
    lines = []
    for (name, size_kib, sessions), m in cells.items():
        base = cells.get((one, size_kib, sessions))
        if name != two or base is None or not base.rate:
            continue
        ratio = m.rate / base.rate
        verdict = "met" if ratio >= target else "NOT MET"
        ceiling = workers_ceiling(m, base, cores)
        lines.append(
            f"{two} {size_kib} KiB x{sessions}: {ratio:.2f}x {one}'s msg/s "
            f"(target >= {target:.1f}x: {verdict}); ceiling on {cores} cores with the load "
            f"generator's {m.load_cpu_ms_per_msg:.2f} ms/msg beside {two}'s "
            f"{m.cpu_ms_per_msg:.2f}: {ceiling:.2f}x"
        )
    return "\n".join(lines)


def format_compare_targets(results: Sequence[Measurement], system: str = "mailgate") -> str:
    """Whether `system` meets issue 14's targets against Postfix and Haraka, cell by cell:
    the ratio by msg/s (what the target asks) and by CPU per message (steadier when shared)."""
    cells = {(m.system, m.size_kib, m.sessions): m for m in results}
    lines = []
    for (name, size_kib, sessions), m in cells.items():
        if name != system:
            continue
        for rival, target in COMPARE_TARGETS.items():
            base = cells.get((rival, size_kib, sessions))
            if base is None or not base.rate:
                continue
            by_rate = m.rate / base.rate
            by_cpu = base.cpu_ms_per_msg / m.cpu_ms_per_msg if m.cpu_ms_per_msg else float("nan")
            verdict = "met" if by_rate >= target else "NOT MET"
            lines.append(
                f"{system} {size_kib} KiB x{sessions}: {by_rate:.2f}x {rival}'s msg/s, "
                f"{by_cpu:.2f}x by CPU per message (target >= {target:.1f}x: {verdict})"
            )
    return "\n".join(lines)
