"""``mailgate queue`` against a running ``mailgate serve`` (its own process), on SQLite and
PostgreSQL: the node's worker obeys hold, and is woken by retry and release at once (SIGUSR1),
long before its next poll."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.peers.smtp_sink import SmtpSink, SmtpSinkFactory
from tests.peers.workdir import PeerDirs
from tests.queue.helpers import Node, message, send
from tests.queue.test_crash import leases

MAILGATE = [str(Path(sys.executable).parent / "mailgate")]
POLL = 60.0
"""The node's poll interval: anything that happens well before it was woken."""


def queue(node: Node, *args: str, stdin: str = "") -> tuple[int, str]:
    """``mailgate queue ARGS --config NODE``, as another process; (status, stdout + stderr)."""
    done = subprocess.run(
        [*MAILGATE, "queue", *args, "--config", str(node.config)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def wait_for(probe, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


def test_hold_retry_and_release_on_a_running_node(
    store_url: str, tmp_path: Path, peer_dirs: PeerDirs
) -> None:
    sink = SmtpSink(peer_dirs.new("sink"))  # its port is chosen now; down until started
    settings = {"poll_interval": POLL, "min_backoff": 600.0, "max_backoff": 600.0}
    node = Node.configure(tmp_path / "node", store_url, f"127.0.0.1:{sink.port}", **settings)
    node.start()
    try:
        ids = {}
        for name in ("kept", "held"):
            code, text = send(node.port, [f"{name}@example.org"], message(f"{name}@cli.test"))
            assert code == 250
            ids[name] = text.rsplit(" ", 1)[1]

        def deferred() -> bool:
            status, out = queue(node, "list", "--state", "deferred", "--json")
            return status == 0 and len(json.loads(out)["messages"]) == 2

        wait_for(deferred)  # the next hop is down: both tried once, next in 10 minutes
        status, out = queue(node, "list", "--recipient", "kept@example.org")
        assert status == 0, out
        assert "deferred  kept@example.org  (1 attempt, next in 9m: 451 4.4.1 " in out

        status, out = queue(node, "hold", ids["held"], "--reason", "looking at it")
        assert (status, out.splitlines()[-1]) == (0, "1 message held.")
        sink.start()
        started = time.monotonic()
        status, out = queue(node, "retry", "--all")
        assert status == 0, out
        assert f"{ids['kept']}  due now" in out
        assert f"{ids['held']}  not due now: held: due once released" in out
        assert f"mailgate serve (pid {node.proc.pid}) told to deliver now (SIGUSR1)." in out  # type: ignore[union-attr]
        (got,) = sink.wait_for_messages(1, timeout=20)
        assert got.rcpts == ("kept@example.org",)
        assert time.monotonic() - started < POLL / 2  # woken, not polled
        time.sleep(1.0)
        assert len(sink.messages()) == 1  # the held one stays
        status, out = queue(node, "list")
        assert any(line.startswith(f"{ids['held']}  held ") for line in out.splitlines())

        status, out = queue(node, "release", ids["held"])
        assert status == 0 and "told to deliver now (SIGUSR1)" in out
        sink.wait_for_messages(2, timeout=20)
        assert time.monotonic() - started < POLL / 2
        wait_for(lambda: queue(node, "list")[0] == 1)  # delivered: the queue is empty
        assert node.proc is not None and node.proc.poll() is None  # woken, never killed
    finally:
        node.stop()
        sink.stop()


def test_delete_on_a_running_node_spares_the_message_being_delivered(
    store_url: str, tmp_path: Path, smtp_sink_factory: SmtpSinkFactory
) -> None:
    # The delivery is in flight for 8 s (the test's relay command_timeout is 10 s).
    sink = smtp_sink_factory(data_delay=8)
    node = Node.configure(tmp_path / "node", store_url, f"127.0.0.1:{sink.port}", node_id="n")
    node.start()
    try:
        code, text = send(node.port, ["b@example.org"], message("slow@cli.test"))
        assert code == 250
        queue_id = text.rsplit(" ", 1)[1]
        wait_for(lambda: asyncio.run(leases(store_url))["n"] == 1, timeout=30)
        status, out = queue(node, "delete", queue_id, "--yes")
        assert status == 0, out
        assert f"{queue_id}  not deleted: in flight (being delivered now)" in out
        (got,) = sink.wait_for_messages(1, timeout=60)
        assert got.header("Message-ID") == "<slow@cli.test>"
        wait_for(lambda: queue(node, "list")[0] == 1)
    finally:
        node.stop()
