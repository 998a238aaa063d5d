"""Benchmark: the latency each real milter adds to one message, through Postfix and the bridge.

One session at a time (``smtp-source -s 1 -m N -l 10240``, one message per connection), every
route relaying to one smtp-sink, for opendkim (signing), opendmarc, clamav-milter (with clamd),
spamass-milter (with spamd) and rspamd (milter mode):

- Postfix's own milter client, over TCP and over a unix socket (one smtpd listener each);
- mailgate's SMTP listener + relay + the milter bridge, over TCP (``mailgate serve`` with one
  conf.d file ``plugin = "milter"``);
- and, in the same run, the baselines: Postfix alone and mailgate alone.

``python -m tests.bench.bench_milter_latency [--messages N] [--repeats R]`` prints a Markdown
table of milliseconds per message (medians of R runs, the routes taking turns in rotated order)
and the latency each milter adds: the difference to the matching "alone" route. Every message
must reach the sink: a milter that refuses, defers, holds or drops the bench message stops the
run with an error, because that is a bug in the bench, not a figure.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bench.bench_bridge import UnixOpenDkim
from tests.bench.harness import SmtpSink, wait_for_count
from tests.peers.clamav_milter import ClamavMilter
from tests.peers.clamd import start_clamd
from tests.peers.dns import EXAMPLE_ZONE, DnsServer
from tests.peers.opendkim import OpenDkim, make_key
from tests.peers.opendmarc import OpenDmarc, start_port53_dns
from tests.peers.ports import free_port
from tests.peers.postfix import Postfix
from tests.peers.process import Daemon, Peer, banner_probe, start_daemon, stop_all
from tests.peers.rspamd import Rspamd
from tests.peers.spamass_milter import SpamassMilter
from tests.peers.spamd import start_spamd
from tests.peers.workdir import PeerDirs, create_base

ROOT = Path(__file__).resolve().parents[2]
MAILGATE = ROOT / ".venv" / "bin" / "mailgate"
SIZE = 10 * 1024
SENDER = "a@example.com"
"""example.com's SPF allows 127.0.0.1 and its DMARC policy is p=reject (EXAMPLE_ZONE), so
opendmarc and rspamd see an SPF-aligned DMARC pass, and opendkim signs the From domain."""
RECIPIENT = "b@y.test"
WARMUP = 2
"""Messages sent through each route before the timed runs (first scans, first connections)."""

POSTFIX_TCP, POSTFIX_UNIX, BRIDGE = "Postfix TCP", "Postfix unix", "mailgate bridge TCP"
PATHS = (POSTFIX_TCP, POSTFIX_UNIX, BRIDGE)
ALONE = "none"
"""The baseline routes' milter: Postfix alone, mailgate alone."""
POSTFIX, MAILGATE_ALONE = "Postfix", "mailgate"
BASELINE = {POSTFIX_TCP: POSTFIX, POSTFIX_UNIX: POSTFIX, BRIDGE: MAILGATE_ALONE}
"""The baseline route each path is set against."""
MILTERS = ("opendkim", "opendmarc", "clamav-milter", "spamass-milter", "rspamd")
MARKS = {
    "opendkim": b"\nDKIM-Signature: ",
    "opendmarc": b"; dmarc=pass (p=reject",
    "clamav-milter": b"\nX-Virus-Status: Clean",
    "spamass-milter": b"\nX-Spam-Checker-Version: SpamAssassin",
    "rspamd": b"\nX-Spamd-Result: ",
}
"""What each milter leaves on the bench message, and no other milter does: proof it ran."""


@dataclass(frozen=True, slots=True)
class MilterAddresses:
    """One milter as Postfix's smtpd_milters spells it: over TCP, and over a unix socket."""

    name: str
    tcp: str
    unix: str


@dataclass(frozen=True, slots=True)
class Route:
    """The SMTP port smtp-source talks to for one milter (or `ALONE`) along one path."""

    milter: str
    path: str
    port: int


@dataclass(frozen=True, slots=True)
class Row:
    """Median ms per message of one milter along each path, and the baseline it is set against."""

    milter: str
    ms: dict[str, float]
    alone: dict[str, float]

    def added(self, path: str) -> float:
        """What the milter adds along `path`: its time minus the matching "alone" time."""
        return self.ms[path] - self.alone[path]


Started = Callable[[Peer], None]
"""Registers a started peer to be stopped with the testbed."""


def _opendkim(dirs: PeerDirs, started: Started) -> MilterAddresses:
    key = make_key(dirs.new("dkim-key"))
    tcp = OpenDkim(dirs.new("opendkim-tcp"), "s", key).start()
    started(tcp)
    unix = UnixOpenDkim(dirs.new("opendkim-unix"), "s", key).start()
    started(unix)
    return MilterAddresses("opendkim", tcp.milter, unix.milter)


def _opendmarc(dirs: PeerDirs, started: Started, dns: DnsServer) -> MilterAddresses:
    tcp = OpenDmarc(dirs.new("opendmarc-tcp"), dns).start()
    started(tcp)
    unix = OpenDmarc(dirs.new("opendmarc-unix"), dns, unix=True).start()
    started(unix)
    return MilterAddresses("opendmarc", tcp.milter, unix.milter)


def _clamav_milter(dirs: PeerDirs, started: Started, daemons: list[Daemon]) -> MilterAddresses:
    clamd = start_clamd(dirs.new("clamd"))
    daemons.append(clamd.daemon)
    tcp = ClamavMilter(dirs.new("clamav-milter-tcp"), clamd, tcp=True).start()
    started(tcp)
    unix = ClamavMilter(dirs.new("clamav-milter-unix"), clamd).start()
    started(unix)
    return MilterAddresses("clamav-milter", tcp.milter, unix.milter)


def _spamass_milter(dirs: PeerDirs, started: Started, daemons: list[Daemon]) -> MilterAddresses:
    spamd = start_spamd(dirs.new("spamd"))
    daemons.append(spamd.daemon)
    tcp = SpamassMilter(dirs.new("spamass-milter-tcp"), spamd).start()
    started(tcp)
    unix = SpamassMilter(dirs.new("spamass-milter-unix"), spamd, unix=True).start()
    started(unix)
    return MilterAddresses("spamass-milter", tcp.milter, unix.milter)


def _rspamd(dirs: PeerDirs, started: Started, dns: DnsServer) -> MilterAddresses:
    tcp = Rspamd(dirs.new("rspamd-tcp"), dns).start()
    started(tcp)
    unix = Rspamd(dirs.new("rspamd-unix"), dns, unix=True).start()
    started(unix)
    return MilterAddresses("rspamd", tcp.milter, unix.milter)


def start_milters(dirs: PeerDirs, stack: ExitStack, daemons: list[Daemon]) -> list[MilterAddresses]:
    """Start a TCP and a unix instance of every milter in `MILTERS`, in that order.

    Their daemons go into `daemons` (stopped together by the caller); their DNS servers are
    stopped by `stack`.
    """

    def started(peer: Peer) -> None:
        assert peer.daemon is not None
        daemons.append(peer.daemon)

    # opendmarc can only ask port 53; both instances share it. rspamd gets its own DNS.
    dmarc_dns = start_port53_dns()
    stack.callback(dmarc_dns.stop)
    dmarc_dns.add_zone(EXAMPLE_ZONE)
    rspamd_dns = DnsServer().start()
    stack.callback(rspamd_dns.stop)
    rspamd_dns.add_zone(EXAMPLE_ZONE)
    return [
        _opendkim(dirs, started),
        _opendmarc(dirs, started, dmarc_dns),
        _clamav_milter(dirs, started, daemons),
        _spamass_milter(dirs, started, daemons),
        _rspamd(dirs, started, rspamd_dns),
    ]


def _mailgate(dirs: PeerDirs, sink_port: int, milter: MilterAddresses | None) -> tuple[Daemon, int]:
    """`mailgate serve` relaying to the sink, with a conf.d file bridging to `milter` (TCP);
    the daemon and its SMTP port."""
    conf = dirs.new("mailgate-conf")
    port = free_port()
    (conf / "mailgate.toml").write_text(
        '[mailgate]\nhostname = "mailgate.bench.test"\n[logging]\nlevel = "warning"\n'
    )
    if milter is not None:
        (conf / f"40-{milter.name}.toml").write_text(
            f'plugin = "milter"\nname = "{milter.name}"\naddress = "{milter.tcp}"\n'
        )
    argv = [str(MAILGATE), "serve", "--config", str(conf), "--listen", f"127.0.0.1:{port}"]
    argv += ["--relay", f"127.0.0.1:{sink_port}"]
    daemon = start_daemon(
        f"mailgate-{milter.name if milter else ALONE}",
        argv,
        workdir=conf,
        probe=banner_probe("127.0.0.1", port),
        grace=3.0,
    )
    return daemon, port


@dataclass(frozen=True, slots=True)
class Testbed:
    """The running routes, the sink they all deliver to, and the mailgates (for their logs)."""

    routes: list[Route]
    sink: SmtpSink
    mailgates: list[Daemon]


@contextmanager
def latency_testbed(dirs: PeerDirs, *, dump: bool = False) -> Iterator[Testbed]:
    """smtp-sink (keeping every message with `dump`), every milter twice (TCP, unix), one
    Postfix with a listener per milter and socket, and one mailgate per milter plus one alone;
    all stopped on exit, by PID."""
    with ExitStack() as stack:
        daemons: list[Daemon] = []
        stack.callback(stop_all, daemons)
        sink = SmtpSink(dirs.new("sink"), "sink", dump=dump)
        stack.callback(sink.stop)
        sink.start()
        milters = start_milters(dirs, stack, daemons)
        postfix = Postfix(dirs.new("postfix"), ("127.0.0.1", sink.port))
        mailgates: list[Daemon] = []
        routes = [Route(ALONE, POSTFIX, postfix.port)]
        for milter in (None, *milters):
            daemon, port = _mailgate(dirs, sink.port, milter)
            mailgates.append(daemon)
            daemons.append(daemon)
            if milter is None:
                routes.append(Route(ALONE, MAILGATE_ALONE, port))
                continue
            routes.append(Route(milter.name, POSTFIX_TCP, postfix.add_listener([milter.tcp])))
            routes.append(Route(milter.name, POSTFIX_UNIX, postfix.add_listener([milter.unix])))
            routes.append(Route(milter.name, BRIDGE, port))
        postfix.start()
        assert postfix.daemon is not None
        daemons.append(postfix.daemon)
        yield Testbed(routes, sink, mailgates)


def send(route: Route, messages: int, sink: SmtpSink) -> float:
    """Send `messages` one session at a time through `route`; ms per message.

    Returns once the sink has all of them (Postfix delivers after its 250), so runs do not
    overlap; raises when smtp-source saw a refusal or a message did not arrive.
    """
    before = sink.count()
    argv = ["smtp-source", "-s", "1", "-m", str(messages), "-l", str(SIZE)]
    argv += ["-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{route.port}"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    where = f"{route.milter} via {route.path}"
    if proc.returncode != 0 or proc.stderr.strip():
        raise RuntimeError(f"smtp-source, {where}: exit {proc.returncode}: {proc.stderr}")
    arrived = wait_for_count(sink, before + messages, timeout=30.0) - before
    if arrived != messages:
        raise RuntimeError(f"{where}: {arrived} of {messages} messages reached the sink")
    return elapsed * 1000 / messages


def _check_logs(mailgates: list[Daemon]) -> None:
    for daemon in mailgates:
        log = daemon.output.read_text(errors="replace")
        if "milter failed" in log:
            raise RuntimeError(f"{daemon.name}: the bridge failed during the run:\n{log[-2000:]}")


def run(
    messages: int,
    repeats: int,
    dirs: PeerDirs,
    inspect: Callable[[list[bytes]], None] | None = None,
) -> list[Row]:
    """Time every route `repeats` times, rotating the order; one row per milter, baseline first.

    With `inspect`, the sink keeps every message and `inspect` gets them all at the end.
    """
    timings: dict[tuple[str, str], list[float]] = {}
    with latency_testbed(dirs, dump=inspect is not None) as bed:
        for route in bed.routes:
            send(route, WARMUP, bed.sink)
        for repeat in range(repeats):
            shift = repeat * len(bed.routes) // max(repeats, 1)
            for route in bed.routes[shift:] + bed.routes[:shift]:
                ms = send(route, messages, bed.sink)
                timings.setdefault((route.milter, route.path), []).append(ms)
        _check_logs(bed.mailgates)
        if inspect is not None:
            inspect(bed.sink.messages())
    medians = {key: statistics.median(values) for key, values in timings.items()}
    alone = {path: medians[ALONE, BASELINE[path]] for path in PATHS}
    rows = [Row(ALONE, alone, alone)]
    rows += [
        Row(milter, {path: medians[milter, path] for path in PATHS}, alone) for milter in MILTERS
    ]
    return rows


def marked(messages: list[bytes]) -> dict[str, int]:
    """How many of the delivered `messages` bear each milter's mark (`MARKS`)."""
    return {
        milter: sum(mark in message.partition(b"\n\n")[0] for message in messages)
        for milter, mark in MARKS.items()
    }


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table: ms per message along each path, and what the milter adds."""
    lines = [
        "| milter | ms/msg via Postfix TCP | added | via Postfix unix | added "
        "| via mailgate bridge TCP | added |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [row.milter if row.milter != ALONE else "none (Postfix alone, mailgate alone)"]
        for path in PATHS:
            added = "—" if row.milter == ALONE else f"{row.added(path):+.1f}"
            cells += [f"{row.ms[path]:.1f}", added]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark and print when, where, and the table."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_milter_latency")
    parser.add_argument("--messages", type=int, default=100, help="messages per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per route (medians)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    base = create_base()
    try:
        rows = run(args.messages, args.repeats, PeerDirs(base))
    finally:
        if not os.environ.get("MAILGATE_KEEP_PEERS"):
            shutil.rmtree(base, ignore_errors=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.node()}, {os.cpu_count()} cores"
    load = f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    print(f"{stamp}, {machine}, {load}; {args.messages} messages x {args.repeats} runs per route")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
