"""Benchmark: email authentication in mailgate (spf, dkim, arc, dmarc, one Authentication-Results)
against mailgate with no plugins, and against the opendkim + opendmarc milters it replaces.

One run, one load for every route: ``smtp-source -s 20 -m N -F MESSAGE`` (one connection per
message), where MESSAGE is 10 KiB, DKIM-signed (rsa-sha256, 2048 bits, relaxed/relaxed) for a
domain of the test DNS, which also publishes its SPF record (``ip4:127.0.0.0/8 -all``) and a
DMARC record (``p=reject``). Everything is delivered to one smtp-sink. The routes:

- SMTP proxy: ``mailgate serve`` with no plugins (and no Authentication-Results), and with the
  spf, dkim, arc and dmarc plugins and the Authentication-Results header (target: at least 0.7
  of the first's msg/s);
- Postfix alone; Postfix with mailgate's milter listener doing the same checks over a unix
  socket; Postfix with opendkim (verifying) and opendmarc (checking SPF itself and DMARC, with
  opendkim's result) as milters over unix sockets (target: mailgate at least 1.5x their rate);
  and, to tell the listener's own cost from the checks', Postfix with a mailgate milter
  listener that has no plugins (and writes no Authentication-Results), and Postfix with the
  floor milter (tests/bench/floor_milter.py), which takes the steps of the mailgate doing the
  checks and sends the same two headers, but does no work: the ceiling of the milter route.

Every benchmark mailgate is one process (tests/bench/__init__.py), and so is each of opendkim
and opendmarc. The shipped default is one worker per core, so the milter doing the checks runs
a second time with two workers (this machine's cores), to show what that costs beside Postfix.

Both sides resolve through one test DNS server (tests/peers/dns.py) on port 53 of a loopback
address (opendmarc's resolver can ask no other port), so the bench runs as root. mailgate keeps
the answers in its shared DNS cache; opendkim its own (``QueryCache yes``); opendmarc asks every
time, as it does in production (a site usually puts a caching resolver under it). The DNS
server runs in the benchmark's own process: its CPU is charged to no route, and the table shows
the queries each route made per message.

Each route's CPU per message is user+system time of its processes (read from /proc, reaped
children included: Postfix's smtpd and cleanup exit and are reaped by the master) over the load
run and the drain of Postfix's queue. Latency: after each load run, `PROBE` more messages are
timed one by one (connect to the 250 after the end of data), 20 at a time, by the harness's own
asyncio client. Every delivered message is counted, and the last one read: the table says what
its Authentication-Results said.

``python -m tests.bench.bench_auth [--messages N] [--repeats R]`` prints the table (medians;
the order of the routes rotates between repeats); ``--only proxy`` measures the two SMTP proxy
routes alone, ``--only milter`` the Postfix routes through the floor milter and mailgate's
milter listener (without the checks, with them, and with them on two workers), ``--parts``
each check's CPU per message called in-process (no routes), and ``--profile proxy|milter``
samples mailgate with py-spy.
``test_auth_bench_runs_every_route`` in test_bench_smoke.py is the short run CI makes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dkim

from tests.bench.bench_bridge import UnixOpenDkim
from tests.bench.bench_milter import cpu_seconds
from tests.bench.harness import latency_probe, percentile
from tests.bench.profile import format_hotspots, hotspots
from tests.peers.dns import DnsServer
from tests.peers.opendkim import DkimKey, make_key
from tests.peers.opendmarc import OpenDmarc, start_port53_dns
from tests.peers.ports import free_port
from tests.peers.postfix import Postfix
from tests.peers.process import Daemon, banner_probe, connect_probe, start_daemon, stop_all
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs, create_base

ROOT = Path(__file__).resolve().parents[2]
MAILGATE = ROOT / ".venv" / "bin" / "mailgate"
DOMAIN = "signer.example.net"
"""The signing domain (not under .test: libunbound, inside opendkim, answers .test itself)."""
SELECTOR = "bench2026"
SENDER = f"alice@{DOMAIN}"
RECIPIENT = "bob@rcpt.example.org"
SIZE = 10 * 1024
SESSIONS = 20
PROBE = 200
TARGET_PROXY = 0.7
"""mailgate with the auth plugins, as a fraction of mailgate with none (SMTP proxy)."""
TARGET_MILTER = 1.5
"""Postfix + mailgate's milter listener, as a multiple of Postfix + opendkim + opendmarc."""

ZONE = f"""\
$ORIGIN {DOMAIN}.
$TTL 3600
@       IN TXT  "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc  IN TXT  "v=DMARC1; p=reject"
"""

AUTH_PLUGINS = {
    "80-spf.toml": "skip_networks = []  # the load comes from 127.0.0.1\n",
    "85-dkim.toml": 'sign_when = "false"  # verify only, as opendkim does here\n',
    "87-arc.toml": "",
    "90-dmarc.toml": "skip_networks = []\n",
}
"""The plugin files of the mailgates doing the checks (the shipped conf.d files, enabled)."""

PROXY_PLAIN = "SMTP proxy: mailgate, no plugins"
PROXY_AUTH = "SMTP proxy: mailgate + spf, dkim, arc, dmarc, A-R"
POSTFIX_ALONE = "Postfix alone"
POSTFIX_FLOOR = "Postfix + floor milter (mailgate's steps, no work), unix"
POSTFIX_LISTENER = "Postfix + mailgate milter, no plugins, unix"
POSTFIX_MAILGATE = "Postfix + mailgate milter (same checks), unix"
POSTFIX_MAILGATE_W2 = "Postfix + mailgate milter (same checks), 2 workers, unix"
POSTFIX_OPEN = "Postfix + opendkim + opendmarc, unix"
ONLY = {
    "proxy": (PROXY_PLAIN, PROXY_AUTH),
    "milter": (POSTFIX_FLOOR, POSTFIX_LISTENER, POSTFIX_MAILGATE, POSTFIX_MAILGATE_W2),
}
"""The routes ``--only`` measures."""


@dataclass(frozen=True, slots=True)
class Route:
    """One way in: the port smtp-source talks to, and the processes its CPU is charged to."""

    name: str
    port: int
    pids: tuple[tuple[str, int], ...]
    """(label, pid) of each process of the route: mailgate, postfix, opendkim, opendmarc."""
    through_postfix: bool


@dataclass(slots=True)
class Result:
    """Medians over the repeats of one route."""

    name: str
    rate: float
    rates: list[float]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]
    """CPU ms per message of each process of the route (label: ms)."""
    dns_per_message: float
    sent: int
    delivered: int
    results: str
    """The Authentication-Results methods and results in the last delivered message."""
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_total_ms(self) -> float:
        """CPU ms per message of all the route's processes together."""
        return sum(self.cpu_ms.values())


def signed_message(key: DkimKey) -> bytes:
    """A 10 KiB message from `SENDER`, signed with `key` (CRLF lines)."""
    line = b"X" * 78 + b"\r\n"
    headers = (
        f"From: Alice <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: benchmark\r\n"
        f"Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <bench@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    body = line * (SIZE // len(line))
    message = headers + body
    signature: bytes = dkim.sign(
        message,
        SELECTOR.encode(),
        DOMAIN.encode(),
        key.private_key.read_bytes(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"from"],
        linesep=b"\r\n",
    )
    return signature + message


def _mailgate_conf(dirs: PeerDirs, dns: DnsServer, plugins: bool, listeners: str) -> Path:
    conf = dirs.new("mailgate-conf")
    text = (
        '[mailgate]\nhostname = "mx.bench.test"\n[logging]\nlevel = "warning"\n'
        f'[dns]\nnameservers = ["{dns.host}:{dns.port}"]\n'
    )
    if not plugins:
        text += "[authentication_results]\nheader = false\n"
    (conf / "mailgate.toml").write_text(text + listeners)
    if plugins:
        for name, body in AUTH_PLUGINS.items():
            (conf / name).write_text(body)
    return conf


def _proxy(dirs: PeerDirs, dns: DnsServer, sink: SmtpSink, plugins: bool) -> tuple[Daemon, int]:
    conf = _mailgate_conf(dirs, dns, plugins, "")
    port = free_port()
    argv = [str(MAILGATE), "serve", "--config", str(conf), "--listen", f"127.0.0.1:{port}"]
    argv += ["--relay", f"127.0.0.1:{sink.port}"]
    name = "mailgate-auth" if plugins else "mailgate-plain"
    probe = banner_probe("127.0.0.1", port)
    return start_daemon(name, argv, workdir=conf, probe=probe, grace=3.0), port


def _milter(
    dirs: PeerDirs, dns: DnsServer, plugins: bool = True, workers: int = 0
) -> tuple[Daemon, str]:
    """A mailgate milter listener on a unix socket (and TCP, to see it is up), with `workers`
    processes (0: ``$MAILGATE_WORKERS``, which is 1 in the benchmarks)."""
    sock = dirs.new("mailgate-sock") / "milter.sock"
    port = free_port()  # a TCP listener too, only to see that it is up
    listeners = (
        f'[[listener]]\ntype = "milter"\naddress = "unix:{sock}"\nsocket_mode = 0o666\n'
        f'[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:{port}"\n'
    )
    conf = _mailgate_conf(dirs, dns, plugins, listeners)
    argv = [str(MAILGATE), "serve", "--config", str(conf)]
    probe = connect_probe("127.0.0.1", port)
    name = ("mailgate-milter" if plugins else "mailgate-milter-plain") + f"-w{workers or 1}"
    env = {**os.environ, "MAILGATE_WORKERS": str(workers)} if workers else None
    daemon = start_daemon(name, argv, workdir=conf, probe=probe, grace=3.0, env=env)
    return daemon, f"unix:{sock}"


def _floor(dirs: PeerDirs, dns: DnsServer) -> tuple[Daemon, str]:
    """The floor milter (`tests.bench.floor_milter`) taking the steps of the mailgate with the
    checks: the same negotiation, no work."""
    conf = _mailgate_conf(dirs, dns, True, "")
    sock = dirs.new("floor-sock") / "milter.sock"
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.floor_milter", str(sock), str(port), str(conf)]
    probe = connect_probe("127.0.0.1", port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    daemon = start_daemon("floor-milter", argv, workdir=conf, probe=probe, grace=3.0, env=env)
    return daemon, f"unix:{sock}"


@dataclass(slots=True)
class Testbed:
    """Everything started: the routes, and what a run reads (sink, Postfix, DNS)."""

    routes: list[Route]
    sink: SmtpSink
    postfix: Postfix
    dns: DnsServer
    message: bytes
    message_file: Path


@contextmanager
def auth_testbed(dirs: PeerDirs) -> Iterator[Testbed]:
    """DNS, the signed message, smtp-sink, five mailgates, opendkim, opendmarc, Postfix."""
    with ExitStack() as stack:
        dns = start_port53_dns()
        stack.callback(dns.stop)
        key = make_key(dirs.new("dkim-key"), DOMAIN, SELECTOR)
        dns.add_zone(ZONE + key.zone_line() + "\n")
        message = signed_message(key)
        message_file = dirs.new("message") / "signed.eml"
        # smtp-source -F sends each line with CRLF (and dot-stuffs): write LF lines.
        message_file.write_bytes(message.replace(b"\r\n", b"\n"))
        sink = SmtpSink(dirs.new("sink", owner="nobody")).start()
        stack.callback(sink.stop)
        plain, plain_port = _proxy(dirs, dns, sink, plugins=False)
        auth, auth_port = _proxy(dirs, dns, sink, plugins=True)
        milter, milter_address = _milter(dirs, dns)
        two, two_address = _milter(dirs, dns, workers=2)
        listener, listener_address = _milter(dirs, dns, plugins=False)
        floor, floor_address = _floor(dirs, dns)
        stack.callback(stop_all, [plain, auth, milter, two, listener, floor])
        opendkim = UnixOpenDkim(
            dirs.new("opendkim"), "v", key, dns, extra={"QueryCache": "yes"}
        ).start()
        stack.callback(opendkim.stop)
        opendmarc = OpenDmarc(dirs.new("opendmarc"), dns, unix=True).start()
        stack.callback(opendmarc.stop)
        assert opendkim.daemon is not None and opendmarc.daemon is not None
        postfix = Postfix(dirs.new("postfix"), ("127.0.0.1", sink.port))
        with_floor = postfix.add_listener([floor_address])
        with_listener = postfix.add_listener([listener_address])
        with_mailgate = postfix.add_listener([milter_address])
        with_two = postfix.add_listener([two_address])
        with_open = postfix.add_listener([opendkim.milter, opendmarc.milter])
        postfix.start()
        stack.callback(postfix.stop)
        assert postfix.daemon is not None
        master = ("postfix", postfix.daemon.pid)
        routes = [
            Route(PROXY_PLAIN, plain_port, (("mailgate", plain.pid),), False),
            Route(PROXY_AUTH, auth_port, (("mailgate", auth.pid),), False),
            Route(POSTFIX_ALONE, postfix.port, (master,), True),
            Route(POSTFIX_FLOOR, with_floor, (master, ("floor milter", floor.pid)), True),
            Route(POSTFIX_LISTENER, with_listener, (master, ("mailgate", listener.pid)), True),
            Route(POSTFIX_MAILGATE, with_mailgate, (master, ("mailgate", milter.pid)), True),
            Route(POSTFIX_MAILGATE_W2, with_two, (master, ("mailgate", two.pid)), True),
            Route(
                POSTFIX_OPEN,
                with_open,
                (master, ("opendkim", opendkim.daemon.pid), ("opendmarc", opendmarc.daemon.pid)),
                True,
            ),
        ]
        yield Testbed(routes, sink, postfix, dns, message, message_file)


def _drain(postfix: Postfix, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while postfix.queue() and time.monotonic() < deadline:
        time.sleep(0.1)


def _wait_for_sink(sink: SmtpSink, expected: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := _count(sink)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def _count(sink: SmtpSink) -> int:
    """Finished transactions only: smtp-sink creates a dump at MAIL, before the message."""
    return len(sink.messages())


_RESULT = re.compile(r"\b(dkim|spf|dmarc|arc)=(\w+)")


def delivered_results(sink: SmtpSink) -> str:
    """``method=result`` of every Authentication-Results of the newest delivered message."""
    finished = sink.messages()
    if not finished:
        return ""
    head = finished[-1].data.partition(b"\r\n\r\n")[0].decode("latin-1")
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    found = []
    for line in unfolded.splitlines():
        if line.lower().startswith("authentication-results:"):
            found += [f"{m}={r}" for m, r in _RESULT.findall(line)]
    return " ".join(found) or "(no Authentication-Results)"


@dataclass(slots=True)
class _Run:
    rate: float
    cpu_ms: dict[str, float]
    timings: list[float]
    dns: int
    sent: int
    delivered: int
    results: str
    errors: list[str]


def measure(bed: Testbed, route: Route, messages: int, probe: int) -> _Run:
    """One load run and one latency probe of `route`, with CPU, DNS queries and delivery."""
    _drain(bed.postfix)
    bed.sink.clear()
    queries = len(bed.dns.queries)
    before = {label: cpu_seconds(pid) for label, pid in route.pids}
    argv = ["smtp-source", "-s", str(SESSIONS), "-m", str(messages), "-F", str(bed.message_file)]
    argv += ["-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{route.port}"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.perf_counter() - started
    errors = []
    if done.returncode != 0 or done.stderr.strip():
        errors.append(f"smtp-source: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    if route.through_postfix:
        _drain(bed.postfix)
    cpu_ms = {
        label: (cpu_seconds(pid) - before[label]) * 1000 / messages for label, pid in route.pids
    }
    dns = len(bed.dns.queries) - queries
    timings: list[float] = []
    try:
        timings = asyncio.run(
            latency_probe(
                route.port,
                SESSIONS,
                probe,
                SIZE,
                message=bed.message,
                sender=SENDER,
                recipient=RECIPIENT,
            )
        )
    except (OSError, RuntimeError) as exc:
        errors.append(f"latency probe: {exc}")
    delivered = _wait_for_sink(bed.sink, messages + probe)
    return _Run(
        messages / seconds,
        cpu_ms,
        timings,
        dns,
        messages + probe,
        delivered,
        delivered_results(bed.sink),
        errors,
    )


def run(
    messages: int, repeats: int, dirs: PeerDirs, probe: int = PROBE, only: str = ""
) -> list[Result]:
    """Measure every route `repeats` times in rotated order; medians per route. `only`
    ``"proxy"``: the two SMTP proxy routes alone; ``"milter"``: the Postfix routes through the
    floor milter and mailgate's milter listener alone (without the checks, with them, with them
    on two workers)."""
    runs: dict[str, list[_Run]] = {}
    with auth_testbed(dirs) as bed:
        routes = [r for r in bed.routes if not only or r.name in ONLY[only]]
        for repeat in range(repeats):
            shift = repeat % len(routes)
            for route in routes[shift:] + routes[:shift]:
                one = measure(bed, route, messages, probe)
                runs.setdefault(route.name, []).append(one)
                print(
                    f"{route.name:50} {one.rate:8.1f} msg/s  {one.delivered}/{one.sent}",
                    file=sys.stderr,
                    flush=True,
                )
        warnings = [
            line
            for line in bed.postfix.maillog().splitlines()
            if "warning" in line and "milter" in line
        ]
    results = []
    for route in routes:
        cell = runs[route.name]
        timings = [t * 1000 for one in cell for t in one.timings]
        results.append(
            Result(
                name=route.name,
                rate=statistics.median(one.rate for one in cell),
                rates=[one.rate for one in cell],
                p50_ms=percentile(timings, 0.50) if timings else float("nan"),
                p95_ms=percentile(timings, 0.95) if timings else float("nan"),
                p99_ms=percentile(timings, 0.99) if timings else float("nan"),
                cpu_ms={
                    label: statistics.median(one.cpu_ms[label] for one in cell)
                    for label, _ in route.pids
                },
                dns_per_message=statistics.median(one.dns / messages for one in cell),
                sent=sum(one.sent for one in cell),
                delivered=sum(one.delivered for one in cell),
                results=cell[-1].results,
                errors=[e for one in cell for e in one.errors] + warnings[:5],
            )
        )
    return results


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| route | msg/s | p50 ms | p95 ms | p99 ms | CPU ms/msg (total) | CPU ms/msg by process "
        "| DNS queries/msg | delivered | Authentication-Results said |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for r in results:
        by_process = ", ".join(f"{label} {ms:.2f}" for label, ms in r.cpu_ms.items())
        delivered = f"{r.delivered}/{r.sent}" + ("" if r.delivered == r.sent else " FAIL")
        lines.append(
            f"| {r.name} | {r.rate:,.0f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.cpu_total_ms:.2f} | {by_process} | {r.dns_per_message:.2f} | {delivered} "
            f"| {r.results} |"
        )
    return "\n".join(lines)


def targets(results: list[Result]) -> str:
    """The two targets: each by msg/s (what the issue asks) and by CPU per message."""
    by_name = {r.name: r for r in results}
    if PROXY_PLAIN not in by_name:  # --only milter
        listener, checks = by_name[POSTFIX_LISTENER], by_name[POSTFIX_MAILGATE]
        extra = checks.cpu_ms["mailgate"] - listener.cpu_ms["mailgate"]
        two, floor = by_name[POSTFIX_MAILGATE_W2], by_name[POSTFIX_FLOOR]
        return (
            f"mailgate milter: the checks cost {extra:.2f} ms of its CPU per message; "
            f"2 workers: {two.rate / checks.rate:.2f}x the rate of one; the floor milter: "
            f"{floor.rate / checks.rate:.2f}x"
        )
    plain, auth = by_name[PROXY_PLAIN], by_name[PROXY_AUTH]
    proxy = auth.rate / plain.rate
    lines = [
        f"SMTP proxy: auth {proxy:.2f} of no plugins by msg/s, "
        f"{plain.cpu_total_ms / auth.cpu_total_ms:.2f} by CPU per message "
        f"(target >= {TARGET_PROXY}: {'met' if proxy >= TARGET_PROXY else 'MISSED'})",
    ]
    if POSTFIX_OPEN not in by_name:  # --only proxy
        return "\n".join(lines)
    mailgate, theirs = by_name[POSTFIX_MAILGATE], by_name[POSTFIX_OPEN]
    two, floor = by_name[POSTFIX_MAILGATE_W2], by_name[POSTFIX_FLOOR]
    alone = by_name[POSTFIX_ALONE]
    milter = mailgate.rate / theirs.rate

    def checks_cpu(r: Result) -> float:
        # What the checks cost on top of Postfix alone (Postfix's own share differs little).
        return r.cpu_total_ms - alone.cpu_total_ms

    lines += [
        f"Postfix milters: mailgate {milter:.2f}x opendkim + opendmarc by msg/s "
        f"({_spread(mailgate, theirs)}); "
        f"checks' CPU per message {checks_cpu(mailgate):.2f} ms against "
        f"{checks_cpu(theirs):.2f} ms "
        f"(target >= {TARGET_MILTER}: {'met' if milter >= TARGET_MILTER else 'MISSED'})",
        f"  with 2 workers (one per core, the default): {two.rate / theirs.rate:.2f}x by msg/s, "
        f"checks' CPU per message {checks_cpu(two):.2f} ms",
        f"  the floor milter (mailgate's steps, no work): {floor.rate / theirs.rate:.2f}x by "
        f"msg/s, CPU per message {checks_cpu(floor):.2f} ms (the ceiling of any milter here)",
    ]
    return "\n".join(lines)


def _spread(ours: Result, theirs: Result) -> str:
    """The lowest and highest of the ratios of the two routes' rates within one repeat: how far
    the machine moved the figure during this run."""
    ratios = [a / b for a, b in zip(ours.rates, theirs.rates, strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f} within a repeat"


def profile(dirs: PeerDirs, route_name: str, messages: int, seconds_top: int = 120) -> str:
    """Where the mailgate of `route_name` spends its time: py-spy samples over one load run."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    with auth_testbed(dirs) as bed:
        [route] = [r for r in bed.routes if r.name == route_name]
        pid = dict(route.pids)["mailgate"]
        measure(bed, route, 200, 0)  # warm up: imports, DNS cache, key cache
        out = dirs.new("profile") / "stacks.txt"
        argv = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
        argv += ["--output", str(out), "--nonblocking", "--gil"]
        sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            measure(bed, route, messages, 0)
        finally:
            sampler.send_signal(2)  # SIGINT: py-spy writes its output and exits
            sampler.communicate(timeout=60)
        own, total, samples = hotspots(
            re.sub(r"^thread \(0x[0-9A-F]+\);", "", line) for line in out.read_text().splitlines()
        )
    return format_hotspots(own, total, samples, seconds_top)


PARTS = ("spf", "dkim", "arc", "dmarc", "Received-SPF", "Authentication-Results")
OTHER_SENDER = "spf, another sender of the domain"
"""Not a part of the message's checks (not in the total): the spf check of a sender seen for
the first time, from a domain whose records are cached (most mail in production)."""


def parts(dirs: PeerDirs, messages: int) -> dict[str, float]:
    """CPU ms per message of each check, in this process: the plugins' hooks called one after
    the other on the benchmark's message, as the SMTP proxy calls them (keys and records in
    the DNS cache after a first round, as under load)."""
    from mailgate.authentication_results import (
        AuthenticationResultsSettings,
        apply_authentication_results,
    )
    from mailgate.dns import DnsSettings
    from mailgate.logging import LoggingSettings, configure_logging
    from mailgate.plugins.arc.plugin import Arc
    from mailgate.plugins.dkim import Dkim
    from mailgate.plugins.dmarc import Dmarc, DmarcSettings
    from mailgate.plugins.spf import Spf, SpfSettings
    from mailgate.session import Address
    from mailgate.testing.builders import make_session, make_transaction

    configure_logging(LoggingSettings(level="warning"))
    dns = DnsServer().start()
    try:
        key = make_key(dirs.new("dkim-key"), DOMAIN, SELECTOR)
        dns.add_zone(ZONE + key.zone_line() + "\n")
        message = signed_message(key)
        settings = DnsSettings(nameservers=[f"{dns.host}:{dns.port}"])
        spf = Spf(SpfSettings(skip_networks=[]), dns=settings)
        dkim_ = Dkim(dns=settings)
        arc = Arc(dns=settings)
        dmarc = Dmarc(DmarcSettings(skip_networks=[]), dns=settings)
        header = AuthenticationResultsSettings(authserv_id="mx.bench.test")
        session = make_session("127.0.0.1", helo="bench.test")
        spent = dict.fromkeys(PARTS, 0.0)
        spent[OTHER_SENDER] = 0.0
        senders = itertools.count()

        async def one() -> None:
            tx = make_transaction(SENDER, [RECIPIENT], message=message)
            m = tx.message
            assert m is not None
            started = time.process_time()
            await spf.on_mail(session, tx, Address(SENDER))
            spent["spf"] += time.process_time() - started
            other = Address(f"user{next(senders)}@{DOMAIN}")
            started = time.process_time()
            await spf.on_mail(session, make_transaction(other.address, [RECIPIENT]), other)
            spent[OTHER_SENDER] += time.process_time() - started
            for name, plugin in (("dkim", dkim_), ("arc", arc), ("dmarc", dmarc)):
                started = time.process_time()
                await plugin.on_message(session, tx, m)
                spent[name] += time.process_time() - started
            started = time.process_time()
            spf.on_message(tx)
            spent["Received-SPF"] += time.process_time() - started
            started = time.process_time()
            apply_authentication_results(session, tx, header)
            spent["Authentication-Results"] += time.process_time() - started

        async def rounds(count: int) -> None:
            for _ in range(count):
                await one()

        asyncio.run(rounds(20))
        spent.update(dict.fromkeys(spent, 0.0))
        asyncio.run(rounds(messages))
    finally:
        dns.stop()
    return {name: seconds * 1000 / messages for name, seconds in spent.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark and print the table; exit 1 if a message was lost."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_auth")
    parser.add_argument("--messages", type=int, default=2000, help="per route and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", type=int, default=PROBE, help="latency probe messages")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--only",
        choices=sorted(ONLY),
        help="measure the two SMTP proxy routes alone, or the four through a milter (the floor "
        "milter's, and mailgate's without the checks, with them, with them on two workers)",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="instead: CPU ms per message of each check, called in this process",
    )
    parser.add_argument(
        "--profile",
        choices=["proxy", "milter"],
        help="instead: sample mailgate with py-spy on the SMTP proxy or milter route",
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    base = create_base()
    try:
        if args.parts:
            found = parts(PeerDirs(base), args.messages)
            print(" | ".join(f"{name} {ms:.3f}" for name, ms in found.items()))
            total = sum(ms for name, ms in found.items() if name in PARTS)
            print(f"total {total:.3f} ms per message (the parts, {OTHER_SENDER!r} apart)")
            return 0
        if args.profile:
            name = PROXY_AUTH if args.profile == "proxy" else POSTFIX_MAILGATE
            print(profile(PeerDirs(base), name, args.messages))
            return 0
        results = run(args.messages, args.repeats, PeerDirs(base), args.probe, args.only or "")
    finally:
        if not os.environ.get("MAILGATE_KEEP_PEERS"):
            shutil.rmtree(base, ignore_errors=True)
    load = f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, {load}")
    print(table(results))
    print()
    print(targets(results))
    for r in results:
        for error in r.errors:
            print(f"{r.name}: {error}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.delivered == r.sent and not r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
