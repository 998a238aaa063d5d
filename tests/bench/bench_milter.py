"""Benchmark: Postfix with mailgate as its milter, against Postfix alone and a pymilter milter.

Same run, same load: ``smtp-source -s 20 -l 10240`` (one connection per message) into one
private Postfix that relays to smtp-sink; one smtpd port per configuration:

- Postfix with no milter (the baseline);
- mailgate's milter listener with no plugins (relay control only), over TCP and a unix socket;
- mailgate with one header-adding plugin (``add_header``), over TCP and a unix socket;
- the same plugin with the core's Authentication-Results switched off (``no A-R``), over TCP
  and a unix socket: then mailgate does what the pymilter milter does, one header, and Postfix
  sends no headers;
- the same plugin made to declare it reads headers and body (as every plugin did before
  ``reads``), over TCP: Postfix then sends the whole message over the milter socket;
- a minimal pymilter milter that adds a header at the end of the message, over TCP and over a
  unix socket (over TCP it waits out delayed ACKs: see docs/milter.md).

``python -m tests.bench.bench_milter [--messages N] [--repeats R]`` prints the table; the
order of the configurations rotates between repeats and the table shows medians.
``test_milter_bench_smoke`` is the short check that runs with the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.bench.harness import CLOCK_TICKS, process_tree
from tests.bench.profile import format_hotspots, hotspots
from tests.peers.milter_probe import optneg_probe
from tests.peers.ports import free_port
from tests.peers.postfix import Postfix
from tests.peers.process import (
    Daemon,
    banner_probe,
    connect_probe,
    start_daemon,
    stop_all,
)
from tests.peers.workdir import PeerDirs, create_base

ROOT = Path(__file__).resolve().parents[2]
MAILGATE = ROOT / ".venv" / "bin" / "mailgate"
SIZE = 10 * 1024
SESSIONS = 20
BENCH_MAIN_CF: dict[str, str] = {}
"""main.cf overrides for the Postfix under test. None: one instance serves every route, so its
test rules (access maps, header_checks, maillog via postlogd) cost every route the same, and
turning them off changed Postfix's CPU per message by ~10% only (docs/milter.md)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One smtpd port of the Postfix under test and what it uses as milter."""

    name: str
    port: int
    milter_pid: int = 0
    """The milter's process (0: none), whose CPU time per message the table shows."""


@dataclass(frozen=True, slots=True)
class Result:
    """Median rate of one configuration, its ratio to Postfix alone, and one-session latency."""

    name: str
    rate: float
    ratio: float
    runs: tuple[float, ...]
    latency_ms: float
    milter_cpu_ms: float
    """User+system CPU of the milter process per message (median over the repeats)."""
    postfix_cpu_ms: float
    """User+system CPU of Postfix (master and all its children) per message."""


def cpu_seconds(pid: int) -> float:
    """User+system CPU of `pid` and its descendants, including children already reaped.

    Postfix's smtpd and cleanup processes exit after ``max_use`` clients and the master reaps
    them, so the reaped children's times (cutime, cstime) count too.
    """
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{member}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15])
    return total / CLOCK_TICKS


_READS_ALL = (
    "import sys, mailgate.cli, mailgate.pipeline, mailgate.plugins.add_header as a; "
    "a.AddHeader.reads = mailgate.pipeline.MESSAGE_PARTS; sys.exit(mailgate.cli.main())"
)
"""``mailgate`` with ``add_header`` declaring it reads everything (the cost before ``reads``)."""


EVENT_LOOP = "auto"
"""``[mailgate] event_loop`` of the mailgates under test (``--event-loop``)."""

BASELINE: Path | None = None
"""Another ``mailgate`` executable (``--baseline``, e.g. the main checkout's), run with
``add_header`` beside this tree's in the same run: before and after, on the same load."""


def _mailgate(
    dirs: PeerDirs,
    add_header: bool,
    reads_all: bool = False,
    executable: Path = MAILGATE,
    *,
    authentication_results: bool = True,
) -> tuple[Daemon, str, str]:
    """Start ``mailgate serve`` with a TCP and a unix milter listener; return their addresses.

    Without `authentication_results` the core's Authentication-Results header is switched off,
    so mailgate does what the minimal pymilter milter does: one header, no headers read."""
    conf = dirs.new("mailgate-conf")
    sock = dirs.new("mailgate-sock") / "milter.sock"
    port = free_port()
    (conf / "mailgate.toml").write_text(
        f'[mailgate]\nevent_loop = "{EVENT_LOOP}"\n[logging]\nlevel = "warning"\n'
        f"[authentication_results]\nheader = {str(authentication_results).lower()}\n"
        f'[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:{port}"\n'
        f'[[listener]]\ntype = "milter"\naddress = "unix:{sock}"\nsocket_mode = 0o666\n'
    )
    if add_header:
        (conf / "20-add_header.toml").write_text('name = "X-Mailgate"\nvalue = "passed"\n')
    command = [sys.executable, "-c", _READS_ALL] if reads_all else [str(executable)]
    daemon = start_daemon(
        "mailgate-milter",
        [*command, "serve", "--config", str(conf)],
        workdir=conf,
        probe=connect_probe("127.0.0.1", port),
        grace=3.0,
    )
    return daemon, f"inet:127.0.0.1:{port}", f"unix:{sock}"


def _pymilter(dirs: PeerDirs, *, unix: bool = False) -> tuple[Daemon, str]:
    """The minimal pymilter milter on TCP, or on a unix socket (no TCP ACK timing there)."""
    work = dirs.new("pymilter-unix" if unix else "pymilter")
    if unix:
        spec = address = f"unix:{work / 'pymilter.sock'}"
    else:
        port = free_port()
        spec, address = f"inet:{port}@127.0.0.1", f"inet:127.0.0.1:{port}"
    daemon = start_daemon(
        "pymilter-minimal",
        [sys.executable, "-m", "tests.bench.bench_milter", "--pymilter", spec],
        workdir=work,
        probe=lambda: optneg_probe(address),
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        grace=0.5,
    )
    return daemon, address


@contextmanager
def milter_testbed(dirs: PeerDirs) -> Iterator[tuple[Postfix, list[Route]]]:
    """smtp-sink, Postfix relaying to it, mailgate (two processes) and pymilter, all started."""
    with ExitStack() as stack:
        sink_dir = dirs.new("sink", owner="nobody")
        sink_port = free_port()
        sink = start_daemon(
            "smtp-sink",
            ["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "256"],
            workdir=sink_dir,
            probe=banner_probe("127.0.0.1", sink_port),
            grace=1.0,
        )
        plain, plain_tcp, plain_unix = _mailgate(dirs, add_header=False)
        header, header_tcp, header_unix = _mailgate(dirs, add_header=True)
        full, full_tcp, _ = _mailgate(dirs, add_header=True, reads_all=True)
        alone, alone_tcp, alone_unix = _mailgate(
            dirs, add_header=True, authentication_results=False
        )
        pym, pym_tcp = _pymilter(dirs)
        pym_u, pym_unix = _pymilter(dirs, unix=True)
        daemons = [sink, plain, header, full, alone, pym, pym_u]
        stack.callback(stop_all, daemons)
        before: list[tuple[str, str, int]] = []
        if BASELINE is not None:
            old, old_tcp, old_unix = _mailgate(dirs, add_header=True, executable=BASELINE)
            daemons.append(old)
            before = [
                ("baseline mailgate + add_header, TCP", old_tcp, old.pid),
                ("baseline mailgate + add_header, unix", old_unix, old.pid),
            ]
        postfix = Postfix(dirs.new("postfix"), ("127.0.0.1", sink_port), main_cf=BENCH_MAIN_CF)
        routes = [Route("postfix alone", postfix.port)]
        for name, milter, pid in (
            ("mailgate, no plugins, TCP", plain_tcp, plain.pid),
            ("mailgate, no plugins, unix", plain_unix, plain.pid),
            ("mailgate + add_header, TCP", header_tcp, header.pid),
            ("mailgate + add_header, unix", header_unix, header.pid),
            ("mailgate + add_header reading all, TCP", full_tcp, full.pid),
            ("mailgate + add_header, no A-R, TCP", alone_tcp, alone.pid),
            ("mailgate + add_header, no A-R, unix", alone_unix, alone.pid),
            ("pymilter + header, TCP", pym_tcp, pym.pid),
            ("pymilter + header, unix", pym_unix, pym_u.pid),
            *before,
        ):
            routes.append(Route(name, postfix.add_listener([milter]), pid))
        postfix.start()
        stack.callback(postfix.stop)
        yield postfix, routes


def _drain(postfix: Postfix, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while postfix.queue() and time.monotonic() < deadline:
        time.sleep(0.1)


def load(route: Route, messages: int, sessions: int = SESSIONS) -> float:
    """Send `messages` with smtp-source through `route`; the rate in messages per second."""
    return _load(route, messages, sessions)


@dataclass(frozen=True, slots=True)
class _Run:
    rate: float
    milter_cpu_ms: float
    postfix_cpu_ms: float


def measured_load(postfix: Postfix, route: Route, messages: int) -> _Run:
    """`load`, plus the CPU per message of the milter and of Postfix (delivery included)."""
    assert postfix.daemon is not None
    _drain(postfix)
    milter0 = cpu_seconds(route.milter_pid) if route.milter_pid else 0.0
    postfix0 = cpu_seconds(postfix.daemon.pid)
    rate = _load(route, messages, SESSIONS)
    milter1 = cpu_seconds(route.milter_pid) if route.milter_pid else 0.0
    _drain(postfix)
    postfix1 = cpu_seconds(postfix.daemon.pid)
    per_message = 1000 / messages
    return _Run(rate, (milter1 - milter0) * per_message, (postfix1 - postfix0) * per_message)


def _load(route: Route, messages: int, sessions: int) -> float:
    argv = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(SIZE)]
    argv += ["-f", "a@x.test", "-t", "b@y.test", f"127.0.0.1:{route.port}"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or proc.stderr.strip():
        raise RuntimeError(f"smtp-source via {route.name}: {proc.stdout}{proc.stderr}")
    return messages / elapsed


def run(messages: int, repeats: int, dirs: PeerDirs) -> list[Result]:
    """Measure every route `repeats` times, rotating the order; medians and ratios."""
    runs: dict[str, list[_Run]] = {}
    with milter_testbed(dirs) as (postfix, routes):
        for r in range(repeats):
            order = routes[r % len(routes) :] + routes[: r % len(routes)]
            for route in order:
                runs.setdefault(route.name, []).append(measured_load(postfix, route, messages))
        latency = {}
        for route in routes:
            _drain(postfix)
            latency[route.name] = 1000 / load(route, max(10, messages // 50), sessions=1)
        log = postfix.maillog()
    if "milter" in log and "warning" in log:
        bad = [line for line in log.splitlines() if "warning" in line and "milter" in line]
        if bad:
            raise RuntimeError("Postfix milter warnings:\n" + "\n".join(bad[:10]))
    base = statistics.median(r.rate for r in runs[routes[0].name])
    results = []
    for name, v in runs.items():
        rate = statistics.median(r.rate for r in v)
        milter_cpu = statistics.median(r.milter_cpu_ms for r in v)
        postfix_cpu = statistics.median(r.postfix_cpu_ms for r in v)
        rates = tuple(r.rate for r in v)
        results.append(
            Result(name, rate, rate / base, rates, latency[name], milter_cpu, postfix_cpu)
        )
    return results


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| configuration | msg/s, 20 sessions | ratio to Postfix alone | ms/msg, 1 session "
        "| milter CPU ms/msg | Postfix CPU ms/msg |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.name} | {r.rate:,.0f} | {r.ratio:.2f} | {r.latency_ms:.1f} "
        f"| {r.milter_cpu_ms:.2f} | {r.postfix_cpu_ms:.2f} |"
        for r in results
    ]
    return "\n".join(lines)


def _pymilter_main(socket_spec: str) -> None:
    import Milter

    class AddHeader(Milter.Base):  # type: ignore[misc]
        def eom(self) -> int:
            self.addheader("X-Pymilter", "passed")
            result: int = Milter.ACCEPT
            return result

    Milter.factory = AddHeader
    Milter.set_flags(Milter.ADDHDRS)
    os.umask(0)  # a unix socket Postfix's smtpd (user postfix) may connect to
    Milter.runmilter("bench-pymilter", socket_spec, 30)


def profile(dirs: PeerDirs, route_name: str, messages: int, top: int = 40) -> str:
    """Where the milter of `route_name` spends its time: py-spy samples over one load run."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    with milter_testbed(dirs) as (postfix, routes):
        [route] = [r for r in routes if r.name == route_name]
        measured_load(postfix, route, 200)  # warm up
        out = dirs.new("profile") / "stacks.txt"
        argv = [py_spy, "record", "--pid", str(route.milter_pid), "--rate", "500"]
        argv += ["--format", "raw", "--output", str(out), "--nonblocking"]
        sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            run = measured_load(postfix, route, messages)
        finally:
            sampler.send_signal(2)  # SIGINT: py-spy writes its output and exits
            sampler.communicate(timeout=60)
        lines = [
            re.sub(r"^thread \(0x[0-9A-F]+\);", "", line) for line in out.read_text().splitlines()
        ]
        busy = [
            line
            for line in lines
            if "select (selectors.py" not in line and "run_once" not in line.rsplit(";", 1)[-1]
        ]
        own, total, samples = hotspots(busy)
    head = f"{route_name}: {run.rate:,.0f} msg/s, milter CPU {run.milter_cpu_ms:.2f} ms/msg\n"
    return head + format_hotspots(own, total, samples, top)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark and print the table (or run the pymilter milter)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_milter")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    parser.add_argument("--pymilter", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="ROUTE", help="instead: py-spy samples of ROUTE")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="MAILGATE",
        help="also run this mailgate executable with add_header (before/after in one run)",
    )
    args = parser.parse_args(argv)
    global EVENT_LOOP, BASELINE
    EVENT_LOOP = args.event_loop
    BASELINE = args.baseline
    if args.pymilter:
        _pymilter_main(args.pymilter)
        return 0
    if args.profile:
        print(profile(PeerDirs(create_base()), args.profile, args.messages))
        return 0
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory():
        results = run(args.messages, args.repeats, PeerDirs(create_base()))
    load = f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, {load}")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
