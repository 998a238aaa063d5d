"""Postfix's smtp-sink as a downstream SMTP server that records every transaction to a file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, banner_probe, make_dir, start_daemon
from tests.peers.workdir import PeerDirs


@dataclass(frozen=True, slots=True)
class SinkOptions:
    """How smtp-sink behaves: advertised extensions and injected faults.

    Command names are SMTP verbs as smtp-sink spells them: CONNECT, HELO, EHLO, MAIL, RCPT,
    DATA, ".", RSET, QUIT, ... A fault applies to every occurrence of the command.
    """

    hostname: str = "sink.test"
    hard_reject: Sequence[str] = ()  # -f: these commands get 500 5.3.0 (implies no PIPELINING)
    soft_reject: Sequence[str] = ()  # -r: these commands get 450 4.3.0 (implies no PIPELINING)
    disconnect: Sequence[str] = ()  # -q: drop the connection without a reply
    reply_421: Sequence[str] = ()  # -Q: reply 421 and drop the connection
    hard_reply: str | None = None  # -B: text of the 5xx fault reply
    soft_reply: str | None = None  # -b: text of the 4xx fault reply
    data_delay: float | None = None  # -w: seconds before answering DATA
    command_delays: Mapping[str, float] = field(default_factory=dict)  # -W cmd:delay
    pipelining: bool = True  # False: -p
    esmtp: bool = True  # False: -e (HELO only)
    enhanced_status_codes: bool = True  # False: -E
    eightbitmime: bool = True  # False: -8
    dsn: bool = True  # False: -N
    xclient: bool = True  # False: -C
    xforward: bool = True  # False: -F
    auth: bool = True  # False: -a
    lmtp: bool = False  # True: -L
    timeout: int = 100  # -t: seconds per command or reply
    extra_args: Sequence[str] = ()

    def argv(self) -> list[str]:
        """The smtp-sink command-line options for these settings."""
        args = ["-h", self.hostname, "-t", str(self.timeout)]
        for flag, commands in (
            ("-f", self.hard_reject),
            ("-r", self.soft_reject),
            ("-q", self.disconnect),
            ("-Q", self.reply_421),
        ):
            if commands:
                args += [flag, ",".join(commands)]
        if self.hard_reply is not None:
            args += ["-B", self.hard_reply]
        if self.soft_reply is not None:
            args += ["-b", self.soft_reply]
        if self.data_delay is not None:
            args += ["-w", f"{self.data_delay:g}"]
        for command, delay in self.command_delays.items():
            args += ["-W", f"{command}:{delay:g}"]
        for enabled, flag in (
            (self.pipelining, "-p"),
            (self.esmtp, "-e"),
            (self.enhanced_status_codes, "-E"),
            (self.eightbitmime, "-8"),
            (self.dsn, "-N"),
            (self.xclient, "-C"),
            (self.xforward, "-F"),
            (self.auth, "-a"),
        ):
            if not enabled:
                args.append(flag)
        if self.lmtp:
            args.append("-L")
        return [*args, *self.extra_args]


@dataclass(frozen=True, slots=True)
class SinkTransaction:
    """One mail transaction as smtp-sink recorded it."""

    client_addr: str
    helo: str
    mail_from: str  # the reverse path without <>; "" for the null sender
    mail_params: tuple[str, ...]  # ESMTP parameters of MAIL FROM, e.g. ("BODY=8BITMIME",)
    rcpts: tuple[str, ...]  # forward paths without <>, in RCPT order
    rcpt_params: tuple[tuple[str, ...], ...]  # ESMTP parameters of each RCPT TO
    data: bytes  # the message as received, CRLF line ends, without smtp-sink's own headers
    path: Path

    def header(self, name: str) -> str | None:
        """The value of the first message header called ``name`` (case-insensitive), unfolded."""
        from email.parser import BytesHeaderParser

        value = BytesHeaderParser().parsebytes(self.data).get(name)
        return None if value is None else " ".join(str(value).split())


def parse_dump(raw: bytes, path: Path) -> SinkTransaction:
    """Parse one smtp-sink dump file (LF line ends; see smtp-sink(1) "DUMP FILE FORMAT")."""
    lines = raw.split(b"\n")
    if lines[-2:] == [b"", b""]:
        lines = lines[:-2]
    meta: dict[str, list[str]] = {}
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        name, _, value = lines[i].decode("utf-8", "replace").partition(": ")
        meta.setdefault(name, []).append(value)
        i += 1
    if i < len(lines) and lines[i].startswith(b"Received: "):
        i += 1
        while i < len(lines) and lines[i][:1] in (b"\t", b" "):
            i += 1
    body = lines[i:]
    mail_path, *mail_params = (meta.get("X-Mail-Args") or [""])[0].split()
    rcpt_args = [arg.split() for arg in meta.get("X-Rcpt-Args", [])]
    return SinkTransaction(
        client_addr=(meta.get("X-Client-Addr") or [""])[0],
        helo=(meta.get("X-Helo-Args") or [""])[0],
        mail_from=mail_path.strip("<>"),
        mail_params=tuple(mail_params),
        rcpts=tuple(args[0].strip("<>") for args in rcpt_args if args),
        rcpt_params=tuple(tuple(args[1:]) for args in rcpt_args if args),
        data=b"".join(line + b"\r\n" for line in body),
        path=path,
    )


class SmtpSink(Peer):
    """A running smtp-sink on loopback that dumps each transaction into its own file."""

    def __init__(
        self, workdir: Path, options: SinkOptions | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.workdir = workdir
        self.options = options or SinkOptions()
        self.host = host
        self.port = free_port(host)
        self.dump_dir = make_dir(workdir / "msgs", owner="nobody")
        self.daemon: Daemon | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to connect to."""
        return (self.host, self.port)

    def start(self) -> SmtpSink:
        """Start smtp-sink and wait for its 220 greeting."""
        argv = [
            "smtp-sink",
            "-u",
            "nobody",
            "-d",
            f"{self.dump_dir}/%Y%m%d%H%M%S.",
            *self.options.argv(),
            f"{self.host}:{self.port}",
            "64",
        ]
        probe = banner_probe(
            self.host, self.port, b"421" if "CONNECT" in self.options.reply_421 else b""
        )
        self.daemon = start_daemon("smtp-sink", argv, workdir=self.workdir, probe=probe, grace=2.0)
        return self

    def messages(self) -> list[SinkTransaction]:
        """Every transaction received so far, oldest first."""
        files = sorted(self.dump_dir.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        dumps = [(path, path.read_bytes()) for path in files]
        # smtp-sink opens the file at MAIL; only a finished DATA ends it with an empty line.
        return [parse_dump(raw, path) for path, raw in dumps if raw.endswith(b"\n\n")]

    def wait_for_messages(self, count: int = 1, timeout: float = 10.0) -> list[SinkTransaction]:
        """Wait until at least ``count`` transactions arrived (for mail relayed via a queue)."""
        deadline = time.monotonic() + timeout
        while len(found := self.messages()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"smtp-sink got {len(found)} message(s), expected {count}, in {timeout}s"
                )
            time.sleep(0.05)
        # A dump still being written can look finished at a buffer boundary: read until stable.
        while found != (again := self.messages()):
            found = again
            time.sleep(0.05)
        return found

    def clear(self) -> None:
        """Forget the transactions received so far."""
        for path in self.dump_dir.iterdir():
            path.unlink()


SmtpSinkFactory = Callable[..., SmtpSink]
"""``smtp_sink_factory(**SinkOptions fields) -> SmtpSink`` (started)."""


@pytest.fixture
def smtp_sink_factory(peer_dirs: PeerDirs) -> Iterator[SmtpSinkFactory]:
    """Start smtp-sinks with fault injection, e.g. ``smtp_sink_factory(hard_reject=["RCPT"])``.
    Every sink started is stopped after the test."""
    sinks: list[SmtpSink] = []

    def factory(**options: object) -> SmtpSink:
        sink = SmtpSink(peer_dirs.new("sink"), SinkOptions(**options))  # type: ignore[arg-type]
        sinks.append(sink.start())
        return sink

    yield factory
    for sink in sinks:
        sink.stop()


@pytest.fixture
def smtp_sink(smtp_sink_factory: SmtpSinkFactory) -> SmtpSink:
    """A started smtp-sink with default behaviour (accepts everything)."""
    return smtp_sink_factory()
