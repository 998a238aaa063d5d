"""``mailgate quarantine list|show|release|delete|expire``: the held messages in the store.

Each command opens the store of ``--config`` directly (SQLite or PostgreSQL), so it works
whether or not a node is running, and beside running nodes. Exit status: 0 done, 1 nothing
matched or the store failed (the message says which), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from mailgate.columns import columns
from mailgate.durations import age, parse_age
from mailgate.loader import Config
from mailgate.quarantine import admin
from mailgate.quarantine.admin import Filters, HeldMessage
from mailgate.store import Store


def add_commands(parser: argparse.ArgumentParser, config_option: Any) -> None:
    """The ``quarantine`` subcommands, under `parser`."""
    sub = parser.add_subparsers(dest="quarantine_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, filters: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        config_option(p)
        if filters:
            p.add_argument("ids", nargs="*", metavar="ID", help="only these messages")
            p.add_argument("--sender", metavar="TEXT", help="sender contains TEXT")
            p.add_argument("--recipient", metavar="TEXT", help="a recipient contains TEXT")
            p.add_argument("--plugin", metavar="NAME", help="held by plugin NAME")
            p.add_argument(
                "--older-than",
                metavar="AGE",
                type=parse_age,
                help="held before AGE ago (30m, 2h, 7d)",
            )
            p.add_argument(
                "--newer-than", metavar="AGE", type=parse_age, help="held within the last AGE"
            )
            p.add_argument("--state", choices=("held", "released"), help="held or released")
        return p

    listing = command("list", "list held messages, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    show = command("show", "show held messages: envelope, verdict, results, headers")
    show.add_argument("--body", action="store_true", help="the whole message, not only headers")
    show.add_argument("--json", action="store_true", help="one JSON document")
    release = command(
        "release",
        "deliver held messages without running the plugins again (into the queue when there "
        "is one, else to the relay's downstream), and record who released them",
    )
    release.add_argument(
        "--rescan",
        action="store_true",
        help="send them to mailgate's own SMTP listener instead, so every plugin judges them again",
    )
    release.add_argument("--by", metavar="NAME", help="who releases (default: your login)")
    delete = command("delete", "delete held messages")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    command("expire", "delete what is older than [quarantine] retention_days", filters=False)


def run(args: argparse.Namespace, config: Config) -> int:
    """Run the chosen subcommand against `config`'s store."""
    if config.quarantine.backend != "store":
        print(
            'mailgate quarantine: [quarantine] backend is "directory": the held messages are '
            f"files in {config.relay.quarantine_dir}",
            file=sys.stderr,
        )
        return 1
    from mailgate.logging import LoggingSettings, configure_logging

    # The report is on stdout; the store's own log lines, warnings only, go to stderr.
    configure_logging(LoggingSettings(level="warning"))
    return asyncio.run(_run(args, config))


async def _run(args: argparse.Namespace, config: Config) -> int:
    store = Store(config.store)
    try:
        await store.open()
    except Exception as exc:
        print(
            f"mailgate quarantine: cannot open the store {config.store.redacted()}: {exc}",
            file=sys.stderr,
        )
        return 1
    try:
        if args.quarantine_command == "expire":
            return await _expire(store, config)
        found = await admin.find(store, _filters(args))
        if not found:
            print("mailgate quarantine: no held message matches", file=sys.stderr)
            return 1
        if args.quarantine_command == "list":
            print(_as_json([h.as_dict() for h in found]) if args.json else _table(found))
            return 0
        if args.quarantine_command == "show":
            if args.json:
                print(_as_json([h.as_dict(content=args.body) for h in found]))
            else:
                print("\n\n".join(_shown(h, body=args.body) for h in found))
            return 0
        if args.quarantine_command == "delete":
            return await _delete(store, found, args.yes)
        return await _release(store, config, found, args)
    finally:
        await store.close()


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        ids=args.ids,
        sender=args.sender or "",
        recipient=args.recipient or "",
        plugin=args.plugin or "",
        older_than=args.older_than,
        newer_than=args.newer_than,
        state=args.state or "",
    )


async def _expire(store: Store, config: Config) -> int:
    from mailgate.quarantine.stored import StoredQuarantine

    held = StoredQuarantine(config.store, config.quarantine, socket.gethostname(), store=store)
    gone = await held.expire()
    days = config.quarantine.retention_days
    print(
        f"{gone} message(s) older than {days:g} days deleted"
        if days
        else "retention_days = 0: nothing expires"
    )
    return 0


async def _delete(store: Store, found: Sequence[HeldMessage], yes: bool) -> int:
    if not yes:
        if not sys.stdin.isatty():
            print(
                "mailgate quarantine delete: add --yes to delete without a terminal to ask on",
                file=sys.stderr,
            )
            return 2
        answer = input(f"delete {len(found)} held message(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    gone = await admin.remove(store, [h.id for h in found])
    print(f"{gone} message(s) deleted")
    return 0


async def _release(
    store: Store, config: Config, found: Sequence[HeldMessage], args: argparse.Namespace
) -> int:
    by = args.by or os.environ.get("SUDO_USER") or getpass.getuser()
    listener = next((lc.settings.address for lc in config.listeners if lc.type == "smtp"), "")
    failed = 0
    for held in found:
        if held.released is not None and not args.rescan:
            print(
                f"{held.id}: already released by {held.released_by}; use --rescan to send it again"
            )
            failed += 1
            continue
        if args.rescan:
            if not listener:
                print(
                    "mailgate quarantine release --rescan: no SMTP listener configured",
                    file=sys.stderr,
                )
                return 1
            released = await asyncio.to_thread(admin.rescan_release, held, listener)
        elif config.queue is not None:
            released = await admin.queue_release(
                held, store, config.queue.node_id or socket.gethostname()
            )
        else:
            released = await admin.relay_release(held, config.relay)
        await admin.record_release(store, released, by)
        state = "released" if released.accepted else "NOT released"
        print(f"{held.id}: {state} by {by} via {released.way}: {released.summary}")
        failed += not released.accepted
    return 1 if failed else 0


def _table(found: Sequence[HeldMessage]) -> str:
    now = datetime.datetime.now(datetime.UTC).timestamp()
    rows = [("ID", "AGE", "STATE", "PLUGIN", "SIZE", "SENDER", "RECIPIENTS", "REASON")]
    for h in found:
        rcpts = ", ".join(r.address for r in h.recipients)
        rows.append((
            h.id, age(now - h.created), h.state, h.plugin or "-", str(h.size),
            h.sender or "<>", rcpts, h.reason,
        ))  # fmt: skip
    lines = columns(rows, indent="")
    lines.append(f"{len(found)} message(s)")
    return "\n".join(lines)


def _shown(h: HeldMessage, *, body: bool) -> str:
    when = datetime.datetime.fromtimestamp(h.created, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )
    lines = [
        f"id:          {h.id}",
        f"held:        {when}, by {h.plugin or 'a plugin'}: {h.reason}",
        f"state:       {h.state}"
        + (f" by {h.released_by}: {h.release_result}" if h.released is not None else ""),
        f"client:      {h.client_ip} ({h.client_name or 'no name'}), HELO {h.helo}"
        + (f", login {h.auth_login}" if h.auth_login else ""),
        f"sender:      <{h.sender}>",
        f"recipients:  {', '.join(f'<{r.address}>' for r in h.recipients)}",
        f"results:     {', '.join(f'{k}={v}' for k, v in h.results.items()) or '-'}",
        f"size:        {h.size} bytes; session {h.session}, transaction {h.transaction}",
        "",
    ]
    text = h.content if body else h.content[: h.header_size]
    # Shown as text, never interpreted: undecodable bytes and control characters escaped.
    lines.append(_printable(text.decode("utf-8", "backslashreplace")))
    return "\n".join(lines).rstrip()


def _printable(text: str) -> str:
    return "".join(
        c if c in "\r\n\t" or c.isprintable() else f"\\x{ord(c):02x}" for c in text
    ).replace("\r\n", "\n")


def _as_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
