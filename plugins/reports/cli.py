"""``mailgate reports``: what would be sent, send now, what was sent, and a domain's summary.

    mailgate reports -c /etc/mailgate pending
    mailgate reports -c /etc/mailgate send --now [--dry-run] [--domain example.com]
    mailgate reports -c /etc/mailgate list [--days 7] [--only received|sent]
    mailgate reports -c /etc/mailgate show REPORT_ID
    mailgate reports -c /etc/mailgate summary example.com [--days 30]

It works on the store of the configuration (``[store]``), with the ``reports`` plugin's
settings from its ``conf.d`` file; a running node need not be stopped (PostgreSQL, or SQLite
in WAL mode, takes the second reader, and the unique key still sends each report once).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from mailgate.config import ConfigError
from mailgate.loader import Config, load_config
from mailgate.logging import LoggingSettings, configure_logging
from mailgate.plugins.reports import records
from mailgate.plugins.reports.service import ReportingService, ReportOutcome
from mailgate.plugins.reports.settings import ReportsSettings
from mailgate.store.schema import dmarc_received, dmarc_reports

PLUGIN = "reports"


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The ``reports`` command's options and subcommands."""
    parser.add_argument(
        "--config", "-c", type=Path, default=None, metavar="DIR", help="configuration directory"
    )
    sub = parser.add_subparsers(dest="reports_command", required=True, metavar="COMMAND")
    sub.add_parser("pending", help="the reports that would be sent, per domain, with counts")
    send = sub.add_parser("send", help="build the reports that are due and queue them")
    send.add_argument(
        "--now", action="store_true", help="include periods that ended less than send_delay ago"
    )
    send.add_argument("--dry-run", action="store_true", help="build and print, queue nothing")
    send.add_argument("--domain", default="", help="only this policy domain")
    listing = sub.add_parser("list", help="the reports received and sent, newest first")
    listing.add_argument("--days", type=float, default=7.0, help="how far back (default 7)")
    listing.add_argument(
        "--only", choices=("received", "sent"), default="all", help="received or sent only"
    )
    show = sub.add_parser("show", help="one report received (what it says) or sent")
    show.add_argument("id", help="the report id (from list)")
    summary = sub.add_parser(
        "summary", help="per source, how a domain's mail fared: DMARC, DKIM, SPF pass rates"
    )
    summary.add_argument("domain", help="the From (or policy) domain")
    summary.add_argument("--days", type=float, default=30.0, help="how far back (default 30)")


def run(args: argparse.Namespace) -> int:
    """Run ``mailgate reports ...``; the exit status."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mailgate: configuration error: {exc}", file=sys.stderr)
        return 1
    # Warnings (a store that cannot be opened, DNS failures) go to stderr; the answer to stdout.
    configure_logging(LoggingSettings(level="warning"))
    settings = _settings(config)
    if settings is None:
        where = args.config or "the built-in configuration"
        print(f"mailgate: the reports plugin is not enabled in {where}", file=sys.stderr)
        return 1
    command: Callable[[ReportingService], Awaitable[int]] = {
        "pending": lambda s: _pending(s),
        "send": lambda s: _send(s, args.now, args.dry_run, args.domain),
        "list": lambda s: _list(s, args.days, args.only),
        "show": lambda s: _show(s, args.id),
        "summary": lambda s: _summary(s, args.domain.lower().rstrip("."), args.days),
    }[args.reports_command]
    node = (
        settings.node_id or (config.queue.node_id if config.queue else "") or socket.gethostname()
    )
    service = ReportingService(settings, config.store, node, dns=config.dns)

    async def go() -> int:
        await service.open()
        try:
            return await command(service)
        finally:
            await service.stop()

    return asyncio.run(go())


def _settings(config: Config) -> ReportsSettings | None:
    for plugin in config.plugins:
        if plugin.name == PLUGIN and isinstance(plugin.settings, ReportsSettings):
            return plugin.settings
    return None


def _day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


async def _pending(service: ReportingService) -> int:
    periods = await service.pending(time.time() + service.settings.send_delay)
    periods += [p for p in await _open_periods(service) if p not in periods]
    if not periods:
        print("nothing to report")
        return 0
    print(f"{'domain':32} {'period (UTC)':35} {'messages':>8}  due")
    due = {(p.domain, p.begin) for p in await service.pending()}
    for p in periods:
        when = "now" if (p.domain, p.begin) in due else _day(p.end + service.settings.send_delay)
        print(f"{p.domain:32} {_day(p.begin)} - {_day(p.end)} {p.messages:>8}  {when}")
    return 0


async def _open_periods(service: ReportingService) -> list[records.Period]:
    """Periods still running (the reports they will make), from the far future's view."""
    return await service.pending(time.time() + 2 * 86400 + service.settings.send_delay)


async def _send(service: ReportingService, now: bool, dry_run: bool, domain: str) -> int:
    at = time.time() + (service.settings.send_delay if now else 0.0)
    outcomes = await service.send_due(at, dry_run=dry_run, domain=domain)
    if not outcomes:
        print("nothing is due")
    for outcome in outcomes:
        _print_outcome(outcome)
        if dry_run and outcome.xml:
            print(gzip.decompress(outcome.xml).decode())
    return 1 if any(o.state == "retry" for o in outcomes) else 0


def _print_outcome(outcome: ReportOutcome) -> None:
    print(
        f"{outcome.domain} {_day(outcome.begin)} - {_day(outcome.end)}: {outcome.state}, "
        f"{outcome.messages} messages in {outcome.records} records, {outcome.size} bytes, "
        f"id {outcome.report_id or '-'}"
    )
    for d in outcome.destinations:
        queued = f" (queued as {d.queue_id})" if d.queue_id else ""
        print(f"  {d.uri}: {d.status}{queued}")


async def _list(service: ReportingService, days: float, what: str) -> int:
    since = time.time() - days * 86400
    async with service.store.engine.connect() as conn:
        received = (
            await conn.execute(
                select(dmarc_received)
                .where(dmarc_received.c.received >= since)
                .order_by(dmarc_received.c.received.desc())
            )
        ).all()
        sent = (
            await conn.execute(
                select(dmarc_reports)
                .where(dmarc_reports.c.created >= since)
                .order_by(dmarc_reports.c.created.desc())
            )
        ).all()
    if what in ("all", "received"):
        print(f"received ({len(received)}):")
        for r in received:
            what_ = r.error if r.kind == "malformed" else f"{r.passed}/{r.messages} passed"
            print(
                f"  {r.id}  {_day(r.received)}  {r.kind:9} {r.domain or '-':28} "
                f"{r.org_name or r.mail_from or '-':28} {what_}"
            )
    if what in ("all", "sent"):
        print(f"sent ({len(sent)}):")
        for r in sent:
            print(
                f"  {r.id}  {r.domain:28} {_day(r.period_begin)} - {_day(r.period_end)}  "
                f"{r.state:13} {r.messages:>7} messages  by {r.node}"
            )
    return 0


async def _show(service: ReportingService, report_id: str) -> int:
    async with service.store.engine.connect() as conn:
        row = (
            await conn.execute(select(dmarc_reports).where(dmarc_reports.c.id == report_id))
        ).first()
        received = (
            await conn.execute(select(dmarc_received).where(dmarc_received.c.id == report_id))
        ).first()
    if row is not None:
        print(f"report {row.id}: {row.domain}, {_day(row.period_begin)} - {_day(row.period_end)}")
        print(f"  built {_day(row.created)} by {row.node}: {row.state}")
        print(f"  {row.messages} messages in {row.records} records, {row.size} bytes gzipped")
        for d in json.loads(row.destinations):
            queued = f" (queued as {d['queue_id']})" if d.get("queue_id") else ""
            print(f"  {d['uri']}: {d['status']}{queued}")
        return 0
    if received is not None:
        r = received
        print(f"received {r.id} ({r.kind}) on {_day(r.received)} from {r.mail_from or '<>'}")
        print(f"  reporter: {r.org_name or '-'}; report id: {r.report_id or '-'}")
        if r.kind == "malformed":
            print(f"  could not be read: {r.error}; {len(r.raw or b'')} bytes kept raw")
            return 0
        if r.period_begin:
            print(f"  {r.domain}, {_day(r.period_begin)} - {_day(r.period_end)}")
        print(f"  {r.messages} counted, {r.passed} passed")
        print(json.dumps(json.loads(r.detail), indent=2))
        return 0
    print(f"mailgate: no report {report_id}", file=sys.stderr)
    return 1


async def _summary(service: ReportingService, domain: str, days: float) -> int:
    async with service.store.engine.connect() as conn:
        sources = await records.summary(conn, domain, time.time() - days * 86400)
    if not sources:
        print(f"no evaluations of {domain} in the last {days:g} days")
        return 0
    total = sum(s.messages for s in sources)
    passed = sum(s.passed for s in sources)
    print(f"{domain}: {total} messages from {len(sources)} sources, {_pct(passed, total)} pass")
    print(f"{'source':40} {'messages':>8} {'dmarc':>7} {'dkim':>7} {'spf':>7}")
    for s in sources:
        print(
            f"{s.source_ip:40} {s.messages:>8} {_pct(s.passed, s.messages):>7} "
            f"{_pct(s.dkim_aligned, s.messages):>7} {_pct(s.spf_aligned, s.messages):>7}"
        )
    return 0


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
