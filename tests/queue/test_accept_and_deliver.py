"""Queue mode end to end, on SQLite and on PostgreSQL: 250 only once stored, then delivered;
the next hop down, then back; a recipient refused for good; the store unable to write."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from tests.peers.ports import free_port
from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs
from tests.queue.conftest import AppFactory
from tests.queue.helpers import message, send, store_rows

QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-F]{21})$")


async def wait_for(probe, timeout: float = 45.0):  # type: ignore[no-untyped-def]
    """Await `probe()` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while not (found := await probe()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return found


async def test_queued_message_reaches_the_sink_as_the_plugins_left_it(
    queue_app: AppFactory, store_url: str, smtp_sink: SmtpSink
) -> None:
    plugins = {
        "10-add_header.toml": 'name = "X-Queued"\nvalue = "yes"\n',
        "20-rewrite.toml": (
            '[recipients]\n"list@example.org" = ["one@example.org", "two@example.org"]\n'
        ),
    }
    app = await queue_app(store_url, f"127.0.0.1:{smtp_sink.port}", plugin_files=plugins)
    data = message("m1@queue.test").replace(b"Subject:", b"X-Folded: a\r\n\tb\r\nSubject:")
    code, text = await asyncio.to_thread(send, app.ports[0], ["list@example.org"], data)
    assert code == 250 and QUEUED.search(text), text
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert got.rcpts == ("one@example.org", "two@example.org")
    assert got.mail_from == "a@example.net"
    assert got.header("X-Queued") == "yes"
    assert b"X-Folded: a\r\n\tb\r\n" in got.data  # the header block as stored, byte for byte
    assert got.data.endswith(b"\r\nhello\r\n.a line with a leading dot\r\n")  # un-stuffed
    # Delivered everywhere: nothing stays in the store.
    assert await wait_for(lambda: _empty(store_url))


async def _empty(url: str) -> bool:
    msgs, rcpts = await store_rows(url)
    return not msgs and not rcpts


async def test_250_comes_after_the_message_is_in_the_store(
    queue_app: AppFactory, store_url: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the message must stay queued
    app = await queue_app(store_url, dead, queue={"min_backoff": 60.0, "max_backoff": 60.0})
    rcpts = ["b@example.org", "c@example.org"]
    params_data = message("m2@queue.test")
    code, text = await asyncio.to_thread(send, app.ports[0], rcpts, params_data)
    assert code == 250
    match = QUEUED.search(text)
    assert match is not None
    # Another connection sees it the moment the client has its 250: it was committed.
    msgs, stored = await store_rows(store_url)
    assert [m["id"] for m in msgs] == [match.group(1)]
    assert msgs[0]["sender"] == "a@example.net" and int(str(msgs[0]["size"])) > len(params_data)
    assert sorted(str(r["address"]) for r in stored) == rcpts
    assert {r["state"] for r in stored} <= {"pending", "deferred"}


async def test_next_hop_down_defers_then_delivers_when_it_is_back(
    queue_app: AppFactory, store_url: str, peer_dirs: PeerDirs
) -> None:
    sink = SmtpSink(peer_dirs.new("sink"))  # its port is chosen now, the sink starts later
    app = await queue_app(store_url, f"127.0.0.1:{sink.port}")
    code, _ = await asyncio.to_thread(send, app.ports[0], ["b@example.org"], message("m3@q.test"))
    assert code == 250

    async def deferred() -> list[dict[str, object]]:
        _, rcpts = await store_rows(store_url)
        return [r for r in rcpts if r["state"] == "deferred"]

    (rcpt,) = await wait_for(deferred)
    assert str(rcpt["last_reply"]).startswith("451 4.4.1 Downstream unavailable")
    assert rcpt["attempts"] >= 1
    sink.start()
    try:
        (got,) = await asyncio.to_thread(sink.wait_for_messages, 1, 15.0)
        assert got.header("Message-ID") == "<m3@q.test>"
        assert await wait_for(lambda: _empty(store_url))
    finally:
        sink.stop()


async def test_a_5xx_recipient_is_bounced_and_the_others_delivered(
    queue_app: AppFactory, store_url: str, postfix: Postfix, smtp_sink: SmtpSink
) -> None:
    # Postfix (BDAT) refuses reject*@ with 550 and tempfail*@ with 450; it relays the rest to
    # the sink.
    app = await queue_app(store_url, f"{postfix.host}:{postfix.port}")
    rcpts = ["ok@example.org", "reject-me@example.org", "tempfail-me@example.org"]
    code, _ = await asyncio.to_thread(send, app.ports[0], rcpts, message("m4@q.test"))
    assert code == 250
    # The message for ok@, and the DSN for reject-me@ to the sender (tests/queue/test_dsn.py).
    got = await asyncio.to_thread(smtp_sink.wait_for_messages, 2, 20.0)
    assert sorted(m.rcpts for m in got) == [("a@example.net",), ("ok@example.org",)]

    async def settled() -> dict[str, dict[str, object]]:
        _, rows = await store_rows(store_url)
        states = {str(r["address"]): r for r in rows}
        done = states.get("ok@example.org", {}).get("state") == "delivered"
        return states if done and states["reject-me@example.org"]["state"] == "bounced" else {}

    states = await wait_for(settled)
    bounced = str(states["reject-me@example.org"]["last_reply"])
    assert bounced.startswith("550 5.1.1 ") and "Recipient rejected by test rule" in bounced
    tempfail = states["tempfail-me@example.org"]
    assert tempfail["state"] == "deferred" and str(tempfail["last_reply"]).startswith("450 4.2.1")
    msgs, _ = await store_rows(store_url)
    # Kept: one recipient waits. (The DSN of the bounce, from <>, may still be recorded.)
    assert len([m for m in msgs if m["sender"]]) == 1


async def test_sqlite_store_that_cannot_write_gets_451_not_250(
    queue_app: AppFactory, tmp_path: Path
) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path}/store/locked.db"
    app = await queue_app(url, "127.0.0.1:9", store={"busy_timeout": 0.3})
    # Another process's writer holds the database: mailgate cannot commit.
    # (In a thread: waiting for the lock here must not stop mailgate's loop, which may be
    # in the middle of a transaction of its own.)
    holder = sqlite3.connect(
        f"{tmp_path}/store/locked.db", isolation_level=None, check_same_thread=False
    )
    await asyncio.to_thread(holder.execute, "BEGIN EXCLUSIVE")
    try:
        code, text = await asyncio.to_thread(
            send, app.ports[0], ["b@example.org"], message("m5@q.test")
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (code, text.split(",")[0]) == (451, "4.3.0 Queue unavailable")
    msgs, _ = await store_rows(url)
    assert msgs == []
    code, _ = await asyncio.to_thread(send, app.ports[0], ["b@example.org"], message("m6@q.test"))
    assert code == 250  # the store is back: so is the queue


async def test_dead_postgresql_gets_451_not_250(queue_app: AppFactory, peer_dirs: PeerDirs) -> None:
    from tests.peers.postgres import Postgres

    postgres = Postgres(peer_dirs.new("postgres")).start()
    try:
        url = postgres.create_database("doomed")
        app = await queue_app(url, "127.0.0.1:9", store={"busy_timeout": 2.0})
        code, _ = await asyncio.to_thread(
            send, app.ports[0], ["b@example.org"], message("m7@q.test")
        )
        assert code == 250
        postgres.stop()
        code, text = await asyncio.to_thread(
            send, app.ports[0], ["b@example.org"], message("m8@q.test")
        )
        assert (code, text.split(",")[0]) == (451, "4.3.0 Queue unavailable")
    finally:
        postgres.stop()
