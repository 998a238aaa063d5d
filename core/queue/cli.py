"""``mailgate queue list|show|retry|hold|release|delete|flush``: the queue, operated by hand.

Each command opens the store that ``--config`` names (as ``mailgate serve`` does) and works on
it directly, with or without a node running. After ``retry``, ``flush`` and ``release`` it
wakes the running ``mailgate serve`` of the same ``--config`` (or ``--pid-file``) with SIGUSR1,
so its worker looks at once; other nodes sharing a PostgreSQL store see the change at their
next poll (``poll_interval``).

Exit status: 0 done, 1 nothing matched (or the store could not be opened), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.config import ConfigError
from mailgate.durations import age, parse_age
from mailgate.loader import load_config
from mailgate.logging import LoggingSettings, configure_logging
from mailgate.queue import admin
from mailgate.queue.admin import Action, Filters, MessageView
from mailgate.store import Store, StoreSettings

T = TypeVar("T")

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2
_REPLY_WIDTH = 100


# -- the command line -----------------------------------------------------------------------------


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The ``queue`` command's subcommands (the CLI wires ``mailgate queue`` to this)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        metavar="DIR",
        help="configuration directory whose [store] to open, as mailgate serve reads it "
        "(default: ./conf.d if present, else /etc/mailgate)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document instead")
    selecting = argparse.ArgumentParser(add_help=False)
    selecting.add_argument("ids", nargs="*", metavar="QUEUE_ID", help="queue ids (or prefixes)")
    selecting.add_argument("--sender", metavar="ADDR", help='envelope sender ("" for <>)')
    selecting.add_argument("--recipient", "--rcpt", metavar="ADDR", help="a recipient")
    selecting.add_argument("--domain", metavar="DOMAIN", help="a recipient's domain")
    selecting.add_argument(
        "--older-than", type=parse_age, metavar="AGE", help="accepted at least AGE ago (2h, 3d)"
    )
    selecting.add_argument(
        "--newer-than", type=parse_age, metavar="AGE", help="accepted less than AGE ago"
    )
    selecting.add_argument("--state", choices=admin.STATES, help="the message's state")
    waking = argparse.ArgumentParser(add_help=False)
    waking.add_argument(
        "--pid-file",
        type=Path,
        metavar="FILE",
        help="the running server to wake (default: the mailgate serve with the same --config)",
    )
    sub = parser.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")

    def command(name: str, text: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common, *parents])

    command("list", "list queued messages (all, or those selected)", selecting)
    show = command("show", "show one message: envelope, recipients, headers")
    show.add_argument("id", metavar="QUEUE_ID", help="the queue id (or a unique prefix)")
    show.add_argument("--body", action="store_true", help="the whole message, not the headers")
    selected = " (queue ids, filters, or --all)"
    every = argparse.ArgumentParser(add_help=False)
    every.add_argument("--all", action="store_true", help="every message")
    command("retry", "make the selected messages due now" + selected, selecting, every, waking)
    hold = command("hold", "stop delivering the selected messages" + selected, selecting, every)
    hold.add_argument("--reason", default="", metavar="TEXT", help="why (shown by list, show)")
    command("release", "take the selected messages off hold" + selected, selecting, every, waking)
    delete = command("delete", "remove the selected messages" + selected, selecting, every)
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete.add_argument(
        "--force", action="store_true", help="delete messages being delivered now as well"
    )
    command("flush", "make every message due now (retry --all)", waking)


def run(args: argparse.Namespace) -> int:
    """Run ``mailgate queue ...``; returns the exit status."""
    try:
        filters = _filters(args)
    except ValueError as exc:
        print(f"mailgate queue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    name = args.queue_command
    if name in ("retry", "release", "hold", "delete") and filters.everything and not args.all:
        print(
            f"mailgate queue {name}: give queue ids, filters (--sender, --domain, --state, ...) "
            "or --all",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mailgate: configuration error: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    # Warnings (a migration failing, say) go to stderr; stdout is the listing.
    configure_logging(LoggingSettings(level="warning"))
    try:
        return asyncio.run(_run(args, config.store, filters))
    except (OSError, SQLAlchemyError, StoreMissing) as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        print(f"mailgate queue: store {config.store.redacted()}: {reason}", file=sys.stderr)
        return EXIT_NOTHING


def _filters(args: argparse.Namespace) -> Filters:
    if args.queue_command == "show":
        return Filters(ids=(args.id,))
    if args.queue_command == "flush":
        return Filters()
    return Filters(
        ids=tuple(args.ids),
        sender=args.sender,
        recipient=args.recipient,
        domain=args.domain,
        older_than=args.older_than,
        newer_than=args.newer_than,
        state=args.state,
    )


class StoreMissing(Exception):
    """An SQLite store file that does not exist (opening it would create an empty one)."""


async def _run(args: argparse.Namespace, settings: StoreSettings, filters: Filters) -> int:
    if settings.dialect == "sqlite":
        path = Path(make_url(settings.url).database or "")
        if not path.exists():
            raise StoreMissing(f"no such file {path} (is [store] url right?)")
    store = Store(settings)
    await store.open()
    try:
        return await _dispatch(args, store, filters)
    finally:
        await store.close()


async def _dispatch(args: argparse.Namespace, store: Store, filters: Filters) -> int:
    name, now = args.queue_command, time.time()

    async def read(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with store.engine.connect() as conn:
            return await work(conn)

    if name == "list":
        found = await read(lambda conn: admin.list_messages(conn, filters, now))
        _print(args, {"messages": [m.to_json(now) for m in found]}, list_text(found, now))
        return EXIT_OK if found else EXIT_NOTHING
    if name == "show":
        try:
            shown = await read(lambda conn: admin.find_message(conn, args.id))
        except admin.Ambiguous as exc:
            print(f"mailgate queue show: {exc}", file=sys.stderr)
            return EXIT_NOTHING
        if shown is None:
            print(f"mailgate queue show: {args.id}: no such message in the queue", file=sys.stderr)
            return EXIT_NOTHING
        view, content = shown
        document = {**view.to_json(now), "content": _text(content, view, args.body)}
        _print(args, document, show_text(view, content, now, body=args.body))
        return EXIT_OK
    if name == "delete" and not args.yes:
        matched = await read(lambda conn: admin.list_messages(conn, filters, now))
        if not matched:
            return _report(args, Action("delete"))
        if not _confirm(matched, now):
            print("mailgate queue delete: nothing deleted", file=sys.stderr)
            return EXIT_NOTHING
        filters = Filters(ids=tuple(m.id for m in matched))
    action = await store.transaction(lambda conn: _act(args, conn, filters, now))
    woken = _wake(args) if name in ("retry", "flush", "release") and action.changed else []
    return _report(args, action, woken)


async def _act(
    args: argparse.Namespace, conn: AsyncConnection, filters: Filters, now: float
) -> Action:
    name = args.queue_command
    if name in ("retry", "flush"):
        return await admin.retry(conn, filters, now)
    if name == "hold":
        return await admin.hold(conn, filters, args.reason or "held by mailgate queue hold", now)
    if name == "release":
        return await admin.release(conn, filters, now)
    return await admin.delete_messages(conn, filters, now, force=args.force)


def _confirm(matched: list[MessageView], now: float) -> bool:
    print(list_text(matched, now), file=sys.stderr)
    print(f"Delete {_plural(len(matched), 'message')}? [y/N] ", end="", file=sys.stderr)
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _wake(args: argparse.Namespace) -> list[int]:
    """SIGUSR1 to the running server (its worker looks for due messages at once); the pids
    woken. None running is no error: a node started later finds the messages due."""
    from mailgate import process

    pid_file: Path | None = args.pid_file
    if pid_file is not None:
        pid = process.read_pid(pid_file)
        pids = [pid] if pid is not None else []
    else:
        pids = process.find_servers(args.config)
    woken = []
    for pid in pids:
        if not _is_server(pid):
            continue  # a stale pid file naming another process: SIGUSR1 would end it
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            continue
        woken.append(pid)
    return woken


def _is_server(pid: int) -> bool:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    except OSError:
        return False
    return any(w.endswith(b"mailgate") for w in words) and b"serve" in words


def _report(args: argparse.Namespace, action: Action, woken: list[int] | None = None) -> int:
    document = {**action.to_json(), "woken": woken or []}
    _print(args, document, action_text(action, woken or []))
    return EXIT_OK if action.matched else EXIT_NOTHING


def _print(args: argparse.Namespace, document: object, text: str) -> None:
    print(json.dumps(document, indent=2) if args.json else text)


# -- what the user reads --------------------------------------------------------------------------


def size(n: int) -> str:
    """Bytes as ``812 B``, ``10.2 KiB``, ``3.1 MiB``."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def _when(t: float, now: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    relative = f"in {age(t - now)}" if t > now else f"{age(now - t)} ago"
    return f"{stamp} ({relative})"


def _sender(address: str) -> str:
    return f"<{address}>" if address else "<> (null sender)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _recipient_detail(r: admin.RecipientView, now: float, width: int | None) -> str:
    parts = []
    if r.attempts:
        parts.append(_plural(r.attempts, "attempt"))
    if r.state in ("pending", "deferred") and r.next_attempt is not None:
        parts.append("due now" if r.next_attempt <= now else f"next in {age(r.next_attempt - now)}")
    detail = ", ".join(parts)
    reply = r.last_reply
    if reply and width is not None and len(reply) > width:
        reply = reply[: width - 3] + "..."
    return f"{detail}: {reply}" if detail and reply else detail or reply


def list_text(found: list[MessageView], now: float) -> str:
    """The listing: one line per message, one indented line per recipient, and a summary."""
    if not found:
        return "No queued message matches."
    lines = [f"{'QUEUE ID':<21}  {'STATE':<8}  {'AGE':>6}  {'SIZE':>9}  SENDER"]
    for m in found:
        line = f"{m.id:<21}  {m.state:<8}  {age(now - m.created):>6}  {size(m.size):>9}  "
        line += _sender(m.sender)
        if m.in_flight(now):
            line += f"  [being delivered by {m.lease_owner}]"
        lines.append(line)
        if m.held_since is not None:
            lines.append(f"    held {age(now - m.held_since)} ago: {m.held_reason or ''}".rstrip())
        for r in m.recipients:
            detail = _recipient_detail(r, now, _REPLY_WIDTH)
            lines.append(f"    {r.state:<9} {r.address}" + (f"  ({detail})" if detail else ""))
    lines.append("")
    lines.append(_summary(found, now))
    return "\n".join(lines)


def _summary(found: list[MessageView], now: float) -> str:
    states = {s: 0 for s in admin.STATES}
    for m in found:
        states[m.state] += 1
    total = sum(m.size for m in found)
    by_state = ", ".join(f"{n} {s}" for s, n in states.items() if n)
    flying = sum(1 for m in found if m.in_flight(now))
    text = f"{_plural(len(found), 'message')}, {size(total)}: {by_state}"
    return text + (f"; {flying} being delivered now" if flying else "")


def _text(content: bytes, view: MessageView, body: bool) -> str:
    return (content if body else content[: view.header_size]).decode("utf-8", "replace")


def show_text(view: MessageView, content: bytes, now: float, *, body: bool = False) -> str:
    """One message in full: envelope, state, recipients, then its headers (or all of it)."""
    params = " ".join(view.sender_params)
    lines = [
        f"Queue ID:      {view.id}",
        f"State:         {view.state}",
        f"Accepted:      {_when(view.created, now)} by node {view.node}, "
        f"transaction {view.transaction}",
        f"Size:          {size(view.size)} ({view.size} bytes)",
        f"Sender:        {_sender(view.sender)}" + (f" {params}" if params else ""),
    ]
    if view.envid is not None or view.ret is not None:
        lines.append(f"DSN:           ENVID={view.envid or '-'} RET={view.ret or '-'}")
    if view.held_since is not None:
        lines.append(f"Held:          since {_when(view.held_since, now)}: {view.held_reason}")
    if view.in_flight(now):
        assert view.lease_until is not None
        lines.append(
            f"Delivering:    now, by node {view.lease_owner} (lease until "
            f"{_when(view.lease_until, now)})"
        )
    elif view.next_attempt is not None:
        lines.append(f"Next attempt:  {_when(view.next_attempt, now)}")
    lines += ["", "Recipients:"]
    for r in view.recipients:
        lines.append(f"  {r.state:<9} <{r.address}>")
        lines.append(f"      attempts: {r.attempts}")
        if r.state in ("pending", "deferred") and r.next_attempt is not None:
            lines.append(f"      next attempt: {_when(r.next_attempt, now)}")
        if r.last_reply:
            by = f" (from {r.remote_mta})" if r.remote_mta else ""
            lines.append(f"      last reply{by}: {r.last_reply}")
    lines += ["", "Message:" if body else "Headers:", _text(content, view, body).rstrip("\r\n")]
    return "\n".join(line.replace("\r\n", "\n") for line in lines)


def action_text(action: Action, woken: list[int] | None = None) -> str:
    """What a write command did, one line per message, then a summary line."""
    if not action.matched:
        return "No queued message matches."
    done = {
        "retry": "due now",
        "hold": "held",
        "release": "released",
        "delete": "deleted",
    }[action.name]
    lines = [f"{queue_id}  {done}" for queue_id in action.changed]
    lines += [f"{queue_id}  {note}" for queue_id, note in action.notes.items()]
    lines += [f"{queue_id}  not {done}: {why}" for queue_id, why in action.skipped.items()]
    summary = f"{_plural(len(action.changed), 'message')} {done}"
    if action.skipped:
        summary += f", {len(action.skipped)} left as they were"
    lines.append(summary + ".")
    for pid in woken or []:
        lines.append(f"mailgate serve (pid {pid}) told to deliver now (SIGUSR1).")
    return "\n".join(lines)
