"""Benchmark: mailgate's milter bridge → opendkim, against Postfix's own milter client.

Same run, same load: ``smtp-source -s 20 -l 10240 -f a@example.com`` (one connection per
message, every message signed by opendkim), everything relaying to one smtp-sink:

- Postfix alone, and Postfix → opendkim over TCP and over a unix socket (Postfix's milter
  client, which leaves Nagle and delayed ACKs on);
- mailgate alone (SMTP listener, relay), and mailgate → the same opendkim over TCP through the
  bridge (``TCP_NODELAY``, one write per group of commands, ``TCP_QUICKACK``).

``python -m tests.bench.bench_bridge [--messages N] [--repeats R]`` prints the table: medians,
rates relative to Postfix alone, the CPU time mailgate and opendkim spend per message (user +
system, from /proc, at 20 sessions) and the one-session latency each configuration has (the
latency opendkim adds is the difference to its "alone" line).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bench.harness import cpu_seconds
from tests.peers.opendkim import DkimKey, OpenDkim, make_key
from tests.peers.ports import free_port
from tests.peers.postfix import Postfix
from tests.peers.process import Daemon, banner_probe, start_daemon, stop_all
from tests.peers.workdir import PeerDirs, create_base

ROOT = Path(__file__).resolve().parents[2]
MAILGATE = ROOT / ".venv" / "bin" / "mailgate"
SIZE = 10 * 1024
SESSIONS = 20


class UnixOpenDkim(OpenDkim):
    """The same opendkim signer, listening on a unix socket Postfix's smtpd can reach."""

    @property
    def milter(self) -> str:
        """``unix:/path``."""
        return f"unix:{self.workdir / 'opendkim.sock'}"

    def config(self) -> dict[str, str]:
        """The signer's settings with the socket moved to a world-writable unix socket."""
        return super().config() | {
            "Socket": f"local:{self.workdir / 'opendkim.sock'}",
            "UMask": "000",
        }


@dataclass(frozen=True, slots=True)
class Route:
    """One configuration: the SMTP port smtp-source talks to, and the processes to charge
    CPU time to (mailgate's, opendkim's; 0 when not in the path)."""

    name: str
    port: int
    mailgate_pid: int = 0
    opendkim_pid: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """Median rate, its ratio to Postfix alone, CPU ms per message, one-session latency."""

    name: str
    rate: float
    ratio: float
    latency_ms: float
    mailgate_cpu_ms: float = float("nan")
    opendkim_cpu_ms: float = float("nan")


EVENT_LOOP = "auto"
"""``[mailgate] event_loop`` of the mailgates under test (``--event-loop``)."""


def _mailgate(
    dirs: PeerDirs, sink_port: int, milter: str | None, extra: str = ""
) -> tuple[Daemon, int]:
    conf = dirs.new("mailgate-conf")
    port = free_port()
    (conf / "mailgate.toml").write_text(
        f'[mailgate]\nhostname = "mailgate.bench.test"\nevent_loop = "{EVENT_LOOP}"\n'
        '[logging]\nlevel = "warning"\n'
    )
    if milter is not None:
        (conf / "40-opendkim.toml").write_text(
            f'plugin = "milter"\nname = "opendkim"\naddress = "{milter}"\n{extra}'
        )
    argv = [str(MAILGATE), "serve", "--config", str(conf), "--listen", f"127.0.0.1:{port}"]
    argv += ["--relay", f"127.0.0.1:{sink_port}"]
    daemon = start_daemon(
        "mailgate-bridge", argv, workdir=conf, probe=banner_probe("127.0.0.1", port), grace=3.0
    )
    return daemon, port


@contextmanager
def bridge_testbed(dirs: PeerDirs) -> Iterator[tuple[list[Route], list[Daemon]]]:
    """smtp-sink, opendkim (TCP and unix), Postfix and two mailgates, all started."""
    with ExitStack() as stack:
        key: DkimKey = make_key(dirs.new("dkim-key"))
        tcp = OpenDkim(dirs.new("opendkim-tcp"), "s", key).start()
        stack.callback(tcp.stop)
        unix = UnixOpenDkim(dirs.new("opendkim-unix"), "s", key).start()
        stack.callback(unix.stop)
        sink_port = free_port()
        sink = start_daemon(
            "smtp-sink",
            ["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "256"],
            workdir=dirs.new("sink", owner="nobody"),
            probe=banner_probe("127.0.0.1", sink_port),
            grace=1.0,
        )
        alone, alone_port = _mailgate(dirs, sink_port, None)
        bridged, bridged_port = _mailgate(dirs, sink_port, tcp.milter)
        # A signing milter decides nothing before the end of data: the documented setting sends
        # its connect, MAIL and RCPT steps with the message, in one write.
        batched, batched_port = _mailgate(dirs, sink_port, tcp.milter, 'stages = ["message"]\n')
        daemons = [sink, alone, bridged, batched]
        stack.callback(stop_all, daemons)
        postfix = Postfix(dirs.new("postfix"), ("127.0.0.1", sink_port))
        assert tcp.daemon is not None and unix.daemon is not None
        tcp_pid, unix_pid = tcp.daemon.pid, unix.daemon.pid
        routes = [Route("Postfix alone", postfix.port)]
        routes.append(
            Route("Postfix → opendkim, TCP", postfix.add_listener([tcp.milter]), 0, tcp_pid)
        )
        routes.append(
            Route("Postfix → opendkim, unix", postfix.add_listener([unix.milter]), 0, unix_pid)
        )
        routes.append(Route("mailgate alone", alone_port, alone.pid))
        routes.append(
            Route("mailgate → opendkim, TCP (bridge)", bridged_port, bridged.pid, tcp_pid)
        )
        routes.append(
            Route(
                'mailgate → opendkim, TCP (bridge, stages = ["message"])',
                batched_port,
                batched.pid,
                tcp_pid,
            )
        )
        postfix.start()
        stack.callback(postfix.stop)
        yield routes, [alone, bridged, batched]


@dataclass(frozen=True, slots=True)
class Run:
    """One load run: messages per second, and CPU ms per message of mailgate and opendkim."""

    rate: float
    mailgate_cpu_ms: float
    opendkim_cpu_ms: float


def _cpu(pid: int) -> float:
    return cpu_seconds(pid) if pid else float("nan")


def load(route: Route, messages: int, sessions: int = SESSIONS) -> Run:
    """Send `messages` with smtp-source through `route`; rate and CPU per message."""
    argv = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(SIZE)]
    argv += ["-f", "a@example.com", "-t", "b@y.test", f"127.0.0.1:{route.port}"]
    cpu_before = _cpu(route.mailgate_pid), _cpu(route.opendkim_pid)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    cpu_after = _cpu(route.mailgate_pid), _cpu(route.opendkim_pid)
    if proc.returncode != 0 or proc.stderr.strip():
        raise RuntimeError(f"smtp-source via {route.name}: {proc.stdout}{proc.stderr}")
    per_msg = [(a - b) * 1000 / messages for a, b in zip(cpu_after, cpu_before, strict=True)]
    return Run(messages / elapsed, *per_msg)


def run(messages: int, repeats: int, dirs: PeerDirs) -> list[Result]:
    """Measure every route `repeats` times, rotating the order; medians, ratios, latency."""
    runs: dict[str, list[Run]] = {}
    with bridge_testbed(dirs) as (routes, mailgates):
        for r in range(repeats):
            for route in routes[r % len(routes) :] + routes[: r % len(routes)]:
                time.sleep(0.5)  # let Postfix's queue manager deliver the previous run
                runs.setdefault(route.name, []).append(load(route, messages))
        latency = {
            route.name: 1000 / load(route, max(10, messages // 50), sessions=1).rate
            for route in routes
        }
        for daemon in mailgates:
            log = daemon.output.read_text(errors="replace")
            if "milter failed" in log:
                raise RuntimeError(f"the bridge failed during the run:\n{log[-2000:]}")
    base = statistics.median(run.rate for run in runs[routes[0].name])
    results = []
    for name, v in runs.items():
        rate = statistics.median(run.rate for run in v)
        mailgate_cpu = statistics.median(run.mailgate_cpu_ms for run in v)
        opendkim_cpu = statistics.median(run.opendkim_cpu_ms for run in v)
        results.append(Result(name, rate, rate / base, latency[name], mailgate_cpu, opendkim_cpu))
    return results


def _ms(value: float) -> str:
    return "—" if value != value else f"{value:.2f}"  # NaN: not in this path


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| configuration | msg/s, 20 sessions | ratio to Postfix alone "
        "| CPU ms/msg, mailgate | CPU ms/msg, opendkim | ms/msg, 1 session |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.name} | {r.rate:,.0f} | {r.ratio:.2f} | {_ms(r.mailgate_cpu_ms)} "
        f"| {_ms(r.opendkim_cpu_ms)} | {r.latency_ms:.1f} |"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_bridge")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    args = parser.parse_args(argv)
    global EVENT_LOOP
    EVENT_LOOP = args.event_loop
    print(table(run(args.messages, args.repeats, PeerDirs(create_base()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
