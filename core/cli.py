"""The ``mailgate`` command: ``serve``, ``check-config``, ``reload``, ``plugins``, ``try``,
``config dump``, ``quarantine``, ``queue``, ``reports`` and ``dkim keygen``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from mailgate import __version__
from mailgate.columns import columns
from mailgate.config import ConfigError
from mailgate.loader import Config, installed_plugins, load_config
from mailgate.logging import Level
from mailgate.plugins.dkim import keygen as dkim_keygen
from mailgate.plugins.reports import cli as reports_cli
from mailgate.queue import cli as queue_cli

if TYPE_CHECKING:
    from mailgate.trial import Trial


def parser() -> argparse.ArgumentParser:
    """The whole command line (also what `mailgate.manpage` writes the man page from)."""
    top = argparse.ArgumentParser(
        prog="mailgate", description="A plugin-oriented SMTP filtering host."
    )
    top.add_argument("--version", action="version", version=f"mailgate {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _config_option(p)
        return p

    serve = with_config("serve", "run mailgate until SIGTERM (SIGHUP reloads the configuration)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address of the first SMTP listener")
    serve.add_argument("--relay", metavar="HOST:PORT", help="the downstream MTA")
    serve.add_argument("--milter", metavar="HOST:PORT", help="address of the first milter listener")
    serve.add_argument("--policy", metavar="HOST:PORT", help="address of the first policy listener")
    serve.add_argument(
        "--pid-file", type=Path, metavar="FILE", help="write the process id to FILE while running"
    )
    serve.add_argument(
        "--log-level",
        choices=get_args(Level),
        help="lowest level logged; wins over [logging] level, also after a reload",
    )
    check = with_config("check-config", "check the configuration and exit (0: good, 1: bad)")
    check.add_argument("--listen", metavar="HOST:PORT", help=argparse.SUPPRESS)
    check.add_argument("--relay", metavar="HOST:PORT", help=argparse.SUPPRESS)
    reload = with_config(
        "reload",
        "check the configuration, then make the running mailgate serve re-read it (SIGHUP); "
        "exit 0: signalled, 1: bad configuration or no server found",
    )
    reload.add_argument(
        "--pid-file",
        type=Path,
        metavar="FILE",
        help="the server's pid file (default: the mailgate serve running with the same --config)",
    )
    with_config("plugins", "list installed plugins, which are enabled, and their order")
    _try_arguments(
        with_config(
            "try",
            "run one message through the configured plugins, offline, and show what each "
            "decided and changed (exit 0: accepted, 1: bad configuration, 2: usage, "
            "4: tempfail, 5: reject)",
        )
    )
    config = sub.add_parser(
        "config",
        help="show the configuration (mailgate config dump)",
        description="Show the configuration.",
    )
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    dump = config_sub.add_parser(
        "dump",
        help="print the effective configuration with every default, per file and plugin",
        description="Print the effective configuration as TOML: mailgate.toml's tables with "
        "every default filled in, then each enabled plugin in calling order with its settings.",
    )
    _config_option(dump)
    dump.add_argument(
        "--non-default", action="store_true", help="only the values that differ from the defaults"
    )
    quarantine = sub.add_parser(
        "quarantine",
        help="held messages: list, show, release, delete, expire",
        description="The held messages in the store (mailgate quarantine COMMAND --help).",
    )
    from mailgate.quarantine import cli as quarantine_cli

    quarantine_cli.add_commands(quarantine, _config_option)
    dkim = sub.add_parser("dkim", help="DKIM keys (mailgate dkim keygen)", description="DKIM keys.")
    dkim_keygen.add_commands(dkim)
    queue = sub.add_parser(
        "queue",
        help="list, show, retry, hold, release, delete or flush queued messages",
        description='Operate the queue (egress = "queue"): exit 0 done, 1 nothing matched '
        "or the store cannot be opened, 2 usage.",
    )
    queue_cli.add_commands(queue)
    reports = sub.add_parser(
        "reports", help="DMARC reports (mailgate reports pending|send|list|show|summary)"
    )
    reports_cli.add_commands(reports)
    return top


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        metavar="DIR",
        help="configuration directory: DIR/mailgate.toml and DIR/NN-*.toml "
        f"(default: {' if present, else '.join(str(d) for d in CONFIG_SEARCH)}; "
        "neither: the built-in defaults)",
    )


def _try_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("message", metavar="MESSAGE", help="the message file, or - for stdin")
    p.add_argument(
        "--from", dest="sender", metavar="ADDR", help="envelope sender (default: From header)"
    )
    p.add_argument(
        "--rcpt",
        action="append",
        default=[],
        metavar="ADDR",
        help="envelope recipient, repeat for more (default: To and Cc headers)",
    )
    p.add_argument("--client", default="127.0.0.1", metavar="IP", help="client address")
    p.add_argument("--helo", default="localhost", metavar="NAME", help="HELO/EHLO name")
    p.add_argument("--auth", default="", metavar="LOGIN", help="as if authenticated as LOGIN")
    p.add_argument("--tls", action="store_true", help="as if the client had used STARTTLS")
    p.add_argument(
        "--ingress", choices=("smtp", "milter"), default="smtp", help="listener type to mimic"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument(
        "--output", metavar="FILE", help="write the message as it would be delivered to FILE"
    )


CONFIG_SEARCH = (Path("conf.d"), Path("/etc/mailgate"))
"""Where a command without ``--config`` looks, in order: the first directory found is read."""


def config_directory(given: Path | None) -> Path | None:
    """`given`, or the first of `CONFIG_SEARCH` that exists; None: the built-in defaults.

    Says on stderr which one it chose when none was given, so nobody wonders what was read.
    """
    if given is not None:
        return given
    for candidate in CONFIG_SEARCH:
        if candidate.is_dir():
            print(f"mailgate: reading the configuration in {candidate}/", file=sys.stderr)
            return candidate
    searched = " and ".join(f"{d}/" for d in CONFIG_SEARCH)
    print(f"mailgate: no {searched}: using the built-in defaults", file=sys.stderr)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mailgate`` command line; returns the exit status."""
    args = parser().parse_args(argv)
    if "config" in args:
        args.config = config_directory(args.config)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "reload":
            return _reload(args.config, args.pid_file)
        if args.command == "try":
            return _try(args)
        if args.command == "dkim":
            return dkim_keygen.run(args)
        if args.command == "queue":
            return queue_cli.run(args)
        if args.command == "quarantine":
            from mailgate.quarantine import cli as quarantine_cli

            return quarantine_cli.run(args, load_config(args.config))
        if args.command == "config":
            from mailgate.config_dump import dump

            config = load_config(args.config)
            config.pipeline()  # the plugins' own checks: dump only what would run
            print(dump(config, non_default=args.non_default), end="")
            sys.stdout.flush()
            return 0
        if args.command == "reports":
            return reports_cli.run(args)
        if args.command == "check-config":
            return _check_config(args.config, args.listen, args.relay)
        config = load_config(args.config)
        print(_plugin_table(config))
        sys.stdout.flush()
        return 0
    except ConfigError as exc:
        print(f"mailgate: configuration error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`mailgate plugins | head`): nothing to say, as cat says nothing.
        _quiet_stdout()
        return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit does not fail on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _check_config(directory: Path | None, listen: str | None, relay: str | None) -> int:
    from mailgate import preflight

    config = load_config(directory, listen=listen, relay=relay)
    config.pipeline()
    for warning in preflight.check(config):
        print(f"mailgate: warning: {warning}", file=sys.stderr)
    print(f"configuration OK: {_summary(config)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mailgate import event_loop, process
    from mailgate.app import App  # the server's imports are not needed by the other commands

    directory, addresses = (
        args.config,
        {
            "listen": args.listen,
            "relay": args.relay,
            "milter": args.milter,
            "policy": args.policy,
        },
    )
    # `mailgate queue` wakes a running server with SIGUSR1 (App.run handles it): never let
    # it end a server that is still starting.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    config = load_config(directory, **addresses)
    options = [f"--{k} {v}" for k, v in addresses.items() if v is not None]
    process.set_title(process.title(directory, options))

    async def run() -> None:
        app = App(directory, **addresses, config=config, log_level=args.log_level)
        await app.run()

    if config.mailgate.worker_count() > 1:
        return _serve_workers(args, directory, addresses, config)

    try:
        with process.pid_file(args.pid_file):
            event_loop.run(run(), config.mailgate.event_loop)
    except (process.ProcessError, OSError) as exc:
        print(f"mailgate: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_workers(
    args: argparse.Namespace, directory: Path | None, addresses: dict[str, str | None], config: Any
) -> int:
    """``serve`` with ``workers`` above 1: a master over N worker processes (docs/scaling.md)."""
    from mailgate import event_loop, process
    from mailgate.workers import Master, StartError

    master = Master(directory, addresses, config, log_level=args.log_level)
    try:
        with process.pid_file(args.pid_file):
            event_loop.run(master.run(), "asyncio")
    except (process.ProcessError, OSError, StartError) as exc:
        print(f"mailgate: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _reload(directory: Path | None, pid_file: Path | None) -> int:
    from mailgate import preflight, process

    config = load_config(directory)
    config.pipeline()
    # The running server holds its listeners' ports: probing them would only find it.
    for warning in preflight.check(config, probe_ports=False):
        print(f"mailgate: warning: {warning}", file=sys.stderr)
    try:
        pids = process.signal_reload(directory, pid_file)
    except process.ProcessError as exc:
        print(f"mailgate reload: {exc}", file=sys.stderr)
        return 1
    for pid in pids:
        print(f"configuration OK; mailgate serve (pid {pid}) told to reload (SIGHUP)")
    return 0


def _try(args: argparse.Namespace) -> int:
    from mailgate import event_loop, trial
    from mailgate.logging import LoggingSettings, configure_logging

    try:
        raw = trial.read_message(args.message)
        envelope = trial.envelope(raw, args.sender, args.rcpt)
        client_ip = trial.check_client(args.client)
    except trial.UsageError as exc:
        print(f"mailgate try: {exc}", file=sys.stderr)
        return trial.EXIT_USAGE
    config = load_config(args.config)
    # Plugin failures, with their tracebacks, go to stderr as JSON lines; the report is on stdout.
    configure_logging(LoggingSettings(level="warning"))
    client = trial.Client(client_ip, args.helo, args.auth, args.tls, args.ingress)
    factory = event_loop.loop_factory(config.mailgate.event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(trial.run_trial(config, client, envelope, raw))
    source = "(stdin)" if args.message == "-" else args.message
    if args.json:
        print(json.dumps(trial.json_document(result, source), indent=2))
    else:
        print("\n".join(trial.text_lines(result, source)))
    if args.output:
        _write_output(result, args.output, quiet=args.json)
    return result.exit_status


def _write_output(result: Trial, path: str, *, quiet: bool) -> None:
    from mailgate import trial

    if result.delivered:
        trial.write_message(result, path)
        note = f"message written to {path}"
    else:
        note = f"{path} not written: the message would not be delivered"
    print(note, file=sys.stderr if quiet else sys.stdout)


def _summary(config: Config) -> str:
    listeners = ", ".join(f"{lc.type} {lc.settings.address}" for lc in config.listeners)
    plugins = ", ".join(p.name for p in config.chain) or "none"
    queue = ""
    if config.queue is not None:
        hop = config.queue.next_hop or config.relay.address.default
        queue = f"; queue: {config.store.redacted()} -> {hop}"
    relay = config.relay.address.default + (
        "" if config.relay.address.is_fixed else " (or by rule)"
    )
    return f"listeners: {listeners}; relay: {relay}{queue}; plugins: {plugins}"


def _plugin_table(config: Config) -> str:
    installed = installed_plugins()
    order: dict[str, list[str]] = {}
    for i, p in enumerate(config.chain, 1):
        order.setdefault(p.name, []).append(f"{i}. {Path(p.source).name}")
    lines = ["Installed plugins (entry-point group mailgate.plugins):"]
    rows: list[tuple[str, str, str, str]] = []
    for name in sorted(installed):
        ep = installed[name]
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        rows.append((name, dist, ep.value, "; ".join(order.get(name, [])) or "-"))
    lines += columns(rows, indent="  ")
    lines.append("")
    lines.append("Enabled, in calling order:")
    for i, p in enumerate(config.chain, 1):
        extra = f"  when: {p.when.source}" if p.when is not None else ""
        concurrent = "  concurrent" if p.concurrent else ""
        reads = " and ".join(part for part in ("headers", "body") if part in p.reads)
        lines.append(
            f"  {i}. {p.name}  ({p.source}; timeout {p.timeout:g}s; on_error "
            f"{p.on_error.value}; reads {reads or 'nothing'}){concurrent}{extra}"
        )
    for name, source in config.disabled:
        lines.append(f"  -  {name}  ({source}: enabled = false)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
