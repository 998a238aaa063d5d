"""Benchmark: rewriting with 50 regex rules and a cached LDAP directory, against no rewriting.

One run, two routes, the same load: ``smtp-source -s 20 -m N`` with a 10 KiB message (one
connection per message) from ``alice@sender.example`` to ``bob@example.org``, relayed to one
smtp-sink:

- ``mailgate serve`` with no plugins;
- ``mailgate serve`` with ``rewrite`` (50 recipient regex rules, none of which matches, so
  every rule is tried, and ``use_directory``), ``directory_ldap`` against a real slapd on
  loopback (cached: after the first message every answer comes from the cache) and
  ``recipient_verify`` (which asks the directory too).

Target: the second at least 0.9 of the first's msg/s. CPU per message is user+system time of
each mailgate process (its worker threads included: ldap3 runs in threads) over the load run.
Latency: `PROBE` more messages timed one by one by the harness's asyncio client, 20 at a time.

``python -m tests.bench.bench_directory [--messages N] [--repeats R]`` prints the table
(medians; the order of the routes alternates between repeats). Run it under the bench lock:
``flock /tmp/mailgate-bench.lock .venv/bin/python -m tests.bench.bench_directory``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bench.bench_milter import cpu_seconds
from tests.bench.harness import latency_probe, percentile
from tests.peers.ports import free_port
from tests.peers.process import Daemon, banner_probe, start_daemon, stop_all
from tests.peers.slapd import Slapd
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs, create_base

ROOT = Path(__file__).resolve().parents[2]
MAILGATE = ROOT / ".venv" / "bin" / "mailgate"
SENDER = "alice@sender.example"
RECIPIENT = "bob@example.org"
SIZE = 10 * 1024
SESSIONS = 20
PROBE = 200
RULES = 50
TARGET = 0.9

PLAIN = "mailgate, no rewriting"
REWRITING = f"mailgate + rewrite ({RULES} regex rules) + LDAP directory (cached) + verify"


def rules(count: int = RULES) -> str:
    """`count` recipient rules that do not match `RECIPIENT` (so each one is tried)."""
    out = []
    for i in range(count):
        out.append(
            "[[recipient_rules]]\n"
            f'match = "^(?P<user>[a-z]+)\\\\+list{i}-(?P<tag>[a-z0-9]+)@example\\\\.org$"\n'
            f'replace = "{{user}}-{i}@lists.example.org"\n'
        )
    return "\n".join(out)


def message() -> bytes:
    """A 10 KiB plain message (CRLF lines)."""
    line = b"X" * 78 + b"\r\n"
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: benchmark\r\n"
        "Message-ID: <bench@sender.example>\r\n\r\n"
    ).encode()
    return head + line * ((SIZE - len(head)) // len(line))


def _mailgate(
    dirs: PeerDirs, sink: SmtpSink, files: dict[str, str], name: str
) -> tuple[Daemon, int]:
    conf = dirs.new(name)
    (conf / "mailgate.toml").write_text(
        '[mailgate]\nhostname = "mx.bench.test"\n[logging]\nlevel = "warning"\n'
        "[authentication_results]\nheader = false\n"
        '[relay_control]\ndomains = ["example.org"]\n'
    )
    for file, text in files.items():
        (conf / file).write_text(text)
    port = free_port()
    argv = [str(MAILGATE), "serve", "--config", str(conf), "--listen", f"127.0.0.1:{port}"]
    argv += ["--relay", f"127.0.0.1:{sink.port}"]
    probe = banner_probe("127.0.0.1", port)
    return start_daemon(name, argv, workdir=conf, probe=probe, grace=3.0), port


@dataclass(slots=True)
class Route:
    """One mailgate: its name, port and PID."""

    name: str
    port: int
    pid: int


@contextmanager
def testbed(dirs: PeerDirs) -> Iterator[tuple[list[Route], SmtpSink, Path]]:
    """slapd, smtp-sink and the two mailgates; yields the routes, the sink, the message file."""
    with ExitStack() as stack:
        slapd = Slapd(dirs.new("slapd")).start()
        stack.callback(slapd.stop)
        sink = SmtpSink(dirs.new("sink", owner="nobody")).start()
        stack.callback(sink.stop)
        body = dirs.new("message") / "m.eml"
        body.write_bytes(message().replace(b"\r\n", b"\n"))
        plain, plain_port = _mailgate(dirs, sink, {}, "mailgate-plain")
        files = {
            "05-directory_ldap.toml": f'url = "{slapd.url}"\nbase = "{slapd.suffix}"\n',
            "70-rewrite.toml": "use_directory = true\n" + rules(),
            "72-recipient_verify.toml": 'domains = ["example.org"]\n',
        }
        rewriting, rewriting_port = _mailgate(dirs, sink, files, "mailgate-rewrite")
        stack.callback(stop_all, [plain, rewriting])
        routes = [
            Route(PLAIN, plain_port, plain.pid),
            Route(REWRITING, rewriting_port, rewriting.pid),
        ]
        yield routes, sink, body


def _count(sink: SmtpSink) -> int:
    return sum(1 for _ in sink.dump_dir.iterdir())


def measure(
    route: Route, sink: SmtpSink, body: Path, messages: int, probe: int
) -> dict[str, object]:
    """One load run and one latency probe of `route`."""
    sink.clear()
    before = cpu_seconds(route.pid)
    argv = ["smtp-source", "-s", str(SESSIONS), "-m", str(messages), "-F", str(body)]
    argv += ["-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{route.port}"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.perf_counter() - started
    cpu_ms = (cpu_seconds(route.pid) - before) * 1000 / messages
    errors = [done.stderr.strip()[-300:]] if done.returncode or done.stderr.strip() else []
    timings = asyncio.run(
        latency_probe(
            route.port,
            SESSIONS,
            probe,
            SIZE,
            message=message(),
            sender=SENDER,
            recipient=RECIPIENT,
        )
    )
    deadline = time.monotonic() + 60
    while _count(sink) < messages + probe and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "rate": messages / seconds,
        "cpu_ms": cpu_ms,
        "timings": [t * 1000 for t in timings],
        "delivered": _count(sink),
        "sent": messages + probe,
        "errors": errors,
    }


def run(messages: int, repeats: int, probe: int) -> str:
    """Measure both routes `repeats` times (alternating order); the table and the target."""
    base = create_base()
    cells: dict[str, list[dict[str, object]]] = {}
    try:
        with testbed(PeerDirs(base)) as (routes, sink, body):
            for route in routes:  # warm up: imports, the LDAP connection and cache
                measure(route, sink, body, 40, 0)
            for repeat in range(repeats):
                order = routes if repeat % 2 == 0 else routes[::-1]
                for route in order:
                    one = measure(route, sink, body, messages, probe)
                    cells.setdefault(route.name, []).append(one)
                    print(f"{route.name:80} {one['rate']:8.1f} msg/s", file=sys.stderr)
    finally:
        if not os.environ.get("MAILGATE_KEEP_PEERS"):
            shutil.rmtree(base, ignore_errors=True)
    lines = [
        "| route | msg/s (median) | runs | p50 ms | p95 ms | p99 ms | CPU ms/msg | delivered |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    rates = {}
    for name, cell in cells.items():
        rate = statistics.median(float(c["rate"]) for c in cell)  # type: ignore[arg-type]
        rates[name] = rate
        timings = [t for c in cell for t in c["timings"]]  # type: ignore[attr-defined]
        cpu = statistics.median(float(c["cpu_ms"]) for c in cell)  # type: ignore[arg-type]
        sent = sum(int(c["sent"]) for c in cell)  # type: ignore[call-overload]
        delivered = sum(int(c["delivered"]) for c in cell)  # type: ignore[call-overload]
        runs = ", ".join(f"{float(c['rate']):.0f}" for c in cell)  # type: ignore[arg-type]
        p = [percentile(timings, f) if timings else float("nan") for f in (0.5, 0.95, 0.99)]
        ok = "" if delivered == sent else " FAIL"
        lines.append(
            f"| {name} | {rate:,.0f} | {runs} | {p[0]:.1f} | {p[1]:.1f} | {p[2]:.1f} "
            f"| {cpu:.2f} | {delivered}/{sent}{ok} |"
        )
        for c in cell:
            for error in c["errors"]:  # type: ignore[attr-defined]
                lines.append(f"error: {name}: {error}")
    ratio = rates[REWRITING] / rates[PLAIN]
    met = "met" if ratio >= TARGET else "MISSED"
    lines.append("")
    lines.append(
        f"rewriting + directory: {ratio:.2f} of no rewriting by msg/s (target >= {TARGET}: {met})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run and print the table."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_directory")
    parser.add_argument("--messages", type=int, default=2000, help="per route and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", type=int, default=PROBE)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    text = run(args.messages, args.repeats, args.probe)
    load_after = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at end"
    )
    print(text)
    return 0 if "FAIL" not in text and "error:" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
