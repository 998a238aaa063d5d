"""The reports plugin, measured: recording evaluations on the hot path, building a report.

``python -m tests.bench.reports recording [--postgres URL] [--quick]``: mailgate as an SMTP
proxy (relay) with dmarc alone, and with dmarc + reports, side by side in one run
(smtp-source, 10 KiB, 20 sessions, through the harness). The test DNS (on loopback) publishes
``_dmarc.x.test`` with a rua, so every message is evaluated and recorded; the store is SQLite
in the run's directory, or the PostgreSQL database at URL.

``python -m tests.bench.reports building [--rows N] [--sources S]``: N evaluations of one
domain and period from S source addresses written to SQLite, then one report built (dry run):
the time and the peak memory (tracemalloc) of the build.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import tempfile
import time
import tracemalloc
from dataclasses import asdict, replace
from pathlib import Path

from mailgate.plugins.dmarc.evaluation import Evaluation, PolicyPublished, SpfIdentity
from mailgate.plugins.reports import ReportingService, ReportsSettings
from mailgate.plugins.reports.records import evaluation_row, write_evaluations
from mailgate.store import StoreSettings
from tests.peers.dns import DnsServer
from tests.peers.postgres import Postgres

from . import harness

ZONE = """\
$ORIGIN x.test.
$TTL 300
@       IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc  IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@x.test"
"""

DMARC_CONF = "skip_networks = []\n"
REPORTS_CONF = (
    'org_name = "Bench"\ncontact = "postmaster@bench.test"\nsender = "reports@bench.test"\n'
)


def recording(args: argparse.Namespace) -> None:
    dns = DnsServer().start()
    dns.add_zone(ZONE)
    store = args.postgres or "sqlite:///{config}/store.db"
    postgres = None
    if args.postgres == "auto":  # a throwaway cluster with fsync on, as in production
        workdir = Path(tempfile.mkdtemp(prefix="mailgate-bench-pg-"))
        postgres = Postgres(workdir, durable=True).start()
        store = postgres.create_database("reports")
    core = f'[dns]\nnameservers = ["{dns.host}:{dns.port}"]\n[store]\nurl = "{store}"\n'
    harness.SYSTEMS["mailgate+dmarc"] = lambda: harness.System(
        "mailgate+dmarc", harness.mailgate({"90-dmarc.toml": DMARC_CONF}, core)
    )
    harness.SYSTEMS["mailgate+dmarc+reports"] = lambda: harness.System(
        "mailgate+dmarc+reports",
        harness.mailgate({"90-dmarc.toml": DMARC_CONF, "95-reports.toml": REPORTS_CONF}, core),
    )
    plan = harness.BenchPlan.quick() if args.quick else harness.BenchPlan()
    plan = replace(plan, sizes_kib=(10,), sessions=(20,), repeats=args.repeats)
    try:
        results = harness.run_benchmark(
            plan, ["minimal-relay", "mailgate+dmarc", "mailgate+dmarc+reports"], progress=print
        )
    finally:
        dns.stop()
        if postgres is not None:
            postgres.stop()
    print(harness.format_table(results))
    rates = {m.system: m.rate for m in results}
    ratio = rates["mailgate+dmarc+reports"] / rates["mailgate+dmarc"]
    print(f"dmarc+reports / dmarc: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower)")
    print(json.dumps([asdict(m) for m in results], default=str))


def _evaluation(ip: str, passed: bool) -> Evaluation:
    published = PolicyPublished(
        "x.test", "r", "r", "none", "none", 100, None, False, rua=("mailto:dmarc@x.test",)
    )
    return Evaluation(
        source_ip=ip,
        header_from="x.test",
        envelope_from="x.test" if passed else "other.test",
        spf=SpfIdentity("x.test", "mfrom", "pass" if passed else "fail"),
        dkim=[],
        result="pass" if passed else "fail",
        policy_published=published,
        spf_aligned="pass" if passed else "fail",
    )


async def building(args: argparse.Namespace) -> None:
    settings = ReportsSettings(
        org_name="Bench", contact="p@bench.test", sender="r@bench.test", submitter="bench"
    )
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        url = f"sqlite:///{Path(tmp)}/store.db"
        service = ReportingService(settings, StoreSettings(url=url), "bench")
        await service.open()
        day = 86400
        when = (int(time.time()) // day - 1) * day + 10
        rng = random.Random(1)
        templates = [
            evaluation_row(
                _evaluation(
                    f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", rng.random() < 0.9
                ),
                when,
                day,
            )
            for i in range(args.sources)
        ]
        rows_of = [t for t in templates if t is not None]
        started = time.perf_counter()
        chunk = 20_000
        for start in range(0, args.rows, chunk):
            rows = [
                rows_of[rng.randrange(args.sources)] for _ in range(min(chunk, args.rows - start))
            ]
            await service.store.transaction(functools.partial(write_evaluations, rows=rows))
        print(f"wrote {args.rows} evaluations in {time.perf_counter() - started:.1f} s")
        [period] = await service.pending(time.time() + 2 * day)
        tracemalloc.start()
        started = time.perf_counter()
        outcome = await service.report(period, dry_run=True)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await service.stop()
    print(
        f"built: {outcome.messages} messages in {outcome.records} records, {outcome.size} bytes "
        f"gzipped, in {seconds:.2f} s; peak Python memory during the build {peak / 2**20:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.reports", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    rec = sub.add_parser("recording")
    rec.add_argument("--postgres", default="", metavar="URL", help='"auto": start one')
    rec.add_argument("--quick", action="store_true")
    rec.add_argument("--repeats", type=int, default=3)
    build = sub.add_parser("building")
    build.add_argument("--rows", type=int, default=1_000_000)
    build.add_argument("--sources", type=int, default=5000)
    args = parser.parse_args()
    if args.what == "recording":
        recording(args)
    else:
        asyncio.run(building(args))


if __name__ == "__main__":
    main()
