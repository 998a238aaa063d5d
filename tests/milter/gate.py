"""A milter listener in a background event loop, with Postfix in front: the tests' harness."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailgate.app import App
from mailgate.milter.listener import MilterListener
from mailgate.milter.settings import MilterListenerSettings
from mailgate.pipeline import EnabledPlugin, ErrorPolicy, Pipeline, declared_reads
from tests import event_loops
from tests.peers.postfix import DeliveredMessage, Postfix

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread, so synchronous tests can drive Postfix."""

    def __init__(self) -> None:
        self.loop = event_loops.new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` in the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Chain:
    """The plugin chain the listeners use; tests swap it between messages."""

    def __init__(self) -> None:
        self.pipeline = Pipeline([])

    def use(
        self,
        *plugins: object,
        on_error: ErrorPolicy = ErrorPolicy.TEMPFAIL,
        timeout: float = 2.0,
    ) -> None:
        """Enable `plugins`, in order, for the next connections (each with its ``reads``)."""
        self.pipeline = Pipeline(
            [
                EnabledPlugin(
                    f"p{i}", p, timeout=timeout, on_error=on_error, reads=declared_reads(p)
                )
                for i, p in enumerate(plugins)
            ]
        )


@dataclass
class Sent:
    """What swaks saw."""

    returncode: int
    output: str
    queue_id: str = ""
    test_id: str = ""

    def replies(self) -> list[str]:
        """The server's reply lines (``<-`` and ``<**``), without the arrows."""
        return [line[4:] for line in self.output.splitlines() if line.startswith(("<- ", "<**"))]


@dataclass
class Route:
    """One way into Postfix: an smtpd port whose milter is one of mailgate's listeners."""

    name: str
    port: int
    protocol: int


@dataclass
class Gate:
    """Postfix with one smtpd per (transport, protocol), all using mailgate as their milter."""

    postfix: Postfix
    chain: Chain
    routes: list[Route] = field(default_factory=list)
    loop: LoopThread | None = None
    """The loop the listeners (and so the plugins) run in."""

    def send(
        self,
        route: Route,
        *,
        sender: str = "alice@example.com",
        to: Sequence[str] = ("bob@local.test",),
        headers: Sequence[str] = (),
        body: str = "Hello.\r\n",
        extra: Sequence[str] = (),
    ) -> Sent:
        """Send one message with swaks through `route`; a unique X-Test-Id header marks it."""
        test_id = uuid.uuid4().hex
        argv = ["swaks", "--server", f"127.0.0.1:{route.port}", "--from", sender]
        argv += ["--to", ",".join(to), "--helo", "client.example"]
        argv += ["--header", f"X-Test-Id: {test_id}", "--body", body, "--timeout", "20"]
        for h in headers:
            argv += ["--header", h]
        proc = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=60)
        match = re.search(r"queued as ([0-9A-F]+)", proc.stdout)
        return Sent(proc.returncode, proc.stdout, match.group(1) if match else "", test_id)

    def delivered(
        self, sent: Sent, count: int = 1, timeout: float = 10.0
    ) -> list[DeliveredMessage]:
        """The Maildir copies of `sent` (waits for `count` of them)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [d for d in self.postfix.delivered() if sent.test_id.encode() in d.data]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.03)


def start_listener(
    loop: LoopThread, chain: Chain, address: str, *, progress_interval: float = 10.0
) -> MilterListener:
    """A milter listener on `address`, serving `chain`, in `loop`."""
    settings = MilterListenerSettings(
        address=address, socket_mode=0o666, progress_interval=progress_interval
    )
    listener = MilterListener(settings, pipeline=lambda: chain.pipeline)
    loop.run(listener.start())
    return listener


@contextmanager
def app_behind_postfix(conf: Path, postfix_dir: Path) -> Iterator[tuple[App, Postfix, int]]:
    """`mailgate serve`'s `App` on `conf` (its first listener a milter listener) in a
    background loop, and a new Postfix whose one smtpd uses it as its milter.

    Yields the app, the Postfix and that smtpd's port; stops both afterwards.
    """
    loop = LoopThread()
    app = App(conf, configure_logs=False)
    loop.run(app.start())
    postfix = Postfix(postfix_dir)
    try:
        port = postfix.add_listener([f"inet:127.0.0.1:{app.ports[0]}"])
        postfix.start()
        yield app, postfix, port
    finally:
        postfix.stop()
        loop.run(app.stop())
        loop.close()


def swaks(port: int, to: str = "bob@local.test") -> subprocess.CompletedProcess[str]:
    """One default swaks message into 127.0.0.1:`port`."""
    argv = ["swaks", "--server", f"127.0.0.1:{port}", "--to", to]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@contextmanager
def open_gate(postfix_dir: Path, listeners: Sequence[tuple[str, str]]) -> Iterator[Gate]:
    """Milter listeners at each ``(name, address)`` in `listeners`, serving one `Chain`, and a
    Postfix with one smtpd per listener and milter protocol (6 and 2): the routes
    ``NAME-v6`` and ``NAME-v2``. Stops everything afterwards."""
    loop = LoopThread()
    chain = Chain()
    started = [(name, start_listener(loop, chain, address)) for name, address in listeners]
    gate = Gate(Postfix(postfix_dir), chain, loop=loop)
    for name, listener in started:
        for protocol in (6, 2):
            port = gate.postfix.add_listener([listener.address], protocol=protocol)
            gate.routes.append(Route(f"{name}-v{protocol}", port, protocol))
    gate.postfix.start()
    try:
        yield gate
    finally:
        gate.postfix.stop()
        for _, listener in started:
            loop.run(listener.stop())
        loop.close()
