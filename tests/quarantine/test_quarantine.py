"""Held messages in the store: committed before the 250, listed, shown, released without the
plugins (or through them again), deleted and expired, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from mailgate.app import App
from mailgate.quarantine import admin
from mailgate.quarantine.admin import Filters
from mailgate.store import Store, StoreSettings
from tests.peers.smtp_sink import SmtpSink
from tests.quarantine.conftest import Node

HELD = (
    "From: Mallory <mallory@example.net>\r\nTo: bob@example.org\r\n"
    "Subject: please hold <script>alert(1)</script>\r\n\r\n"
    '<a href="javascript:alert(2)">click</a>\r\n'
)
PLAIN = "From: alice@example.net\r\nTo: bob@example.org\r\nSubject: hello\r\n\r\nhi\r\n"


def send(port: int, message: str, rcpts: list[str] | None = None) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("mallory@example.net")
        for rcpt in rcpts or ["bob@example.org"]:
            client.rcpt(rcpt)
        code, text = client.data(message.encode())
        return code, text.decode()


async def held_rows(store_url: str, **filters: object) -> list[admin.HeldMessage]:
    store = Store(StoreSettings(url=store_url))
    await store.open()
    try:
        return await admin.find(store, Filters(**filters))  # type: ignore[arg-type]
    finally:
        await store.close()


def cli(conf: Path, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}
    return subprocess.run(
        [sys.executable, "-m", "mailgate.cli", "quarantine", *args, "--config", str(conf)],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def conf_of(app: App) -> Path:
    assert app.directory is not None
    return Path(app.directory)


async def test_a_held_message_is_in_the_store_before_the_250(
    node: Node, store_url: str, smtp_sink: SmtpSink
) -> None:
    app = await node(store_url, f"127.0.0.1:{smtp_sink.port}")
    code, text = await asyncio.to_thread(send, app.ports[0], HELD)
    assert code == 250 and text.startswith("2.0.0 Ok: held as ")
    held_id = text.rpartition(" ")[2]
    (row,) = await held_rows(store_url)
    assert row.id == held_id
    assert (row.sender, [r.address for r in row.recipients]) == (
        "mallory@example.net",
        ["bob@example.org"],
    )
    assert (row.plugin, row.reason, row.state) == ("holder", "subject says hold", "held")
    assert row.subject == "please hold <script>alert(1)</script>"
    assert row.client_ip == "127.0.0.1" and row.helo == "client.example"
    assert row.content.endswith(b'<a href="javascript:alert(2)">click</a>\r\n')
    assert b"Received: from client.example" in row.content, "held as it would have left"
    code, _ = await asyncio.to_thread(send, app.ports[0], PLAIN)
    assert code == 250
    (plain,) = smtp_sink.wait_for_messages(1)
    assert plain.header("Subject") == "hello", "only the held one is held"


async def test_list_show_release_without_the_plugins_and_who_did_it(
    node: Node, store_url: str, smtp_sink: SmtpSink, holder_installed: Path
) -> None:
    app = await node(store_url, f"127.0.0.1:{smtp_sink.port}")
    _, text = await asyncio.to_thread(
        send, app.ports[0], HELD, ["bob@example.org", "c@example.org"]
    )
    held_id = text.rpartition(" ")[2]
    conf = conf_of(app)

    listed = await asyncio.to_thread(cli, conf, holder_installed, "list")
    assert listed.returncode == 0, listed.stderr
    header, row, count = listed.stdout.splitlines()
    assert header.split() == [
        "ID",
        "AGE",
        "STATE",
        "PLUGIN",
        "SIZE",
        "SENDER",
        "RECIPIENTS",
        "REASON",
    ]
    assert row.split()[:4] == [held_id, row.split()[1], "held", "holder"]
    assert "mallory@example.net  bob@example.org, c@example.org  subject says hold" in row
    assert count == "1 message(s)"

    shown = await asyncio.to_thread(cli, conf, holder_installed, "show", held_id)
    assert shown.returncode == 0, shown.stderr
    assert "held:        " in shown.stdout and "by holder: subject says hold" in shown.stdout
    assert "Subject: please hold <script>alert(1)</script>" in shown.stdout
    assert "javascript" not in shown.stdout, "headers only, unless --body"

    released = await asyncio.to_thread(
        cli, conf, holder_installed, "release", held_id, "--by", "alice"
    )
    assert released.returncode == 0, released.stdout + released.stderr
    assert f"{held_id}: released by alice via relay 127.0.0.1:{smtp_sink.port}" in released.stdout
    (arrived,) = smtp_sink.wait_for_messages(1)
    # The holder plugin would hold it again: that it arrived shows no plugin ran.
    assert arrived.header("Subject") == "please hold <script>alert(1)</script>"
    assert sorted(arrived.rcpts) == ["bob@example.org", "c@example.org"]
    (row_after,) = await held_rows(store_url)
    assert (row_after.state, row_after.released_by) == ("released", "alice")
    assert row_after.release_result is not None and "250" in row_after.release_result

    again = await asyncio.to_thread(cli, conf, holder_installed, "release", held_id)
    assert again.returncode == 1
    assert "already released by alice; use --rescan" in again.stdout
    none_held = await asyncio.to_thread(cli, conf, holder_installed, "list", "--state", "held")
    assert none_held.returncode == 1
    assert none_held.stderr == "mailgate quarantine: no held message matches\n"


async def test_release_rescan_runs_the_chain_again(
    node: Node, store_url: str, smtp_sink: SmtpSink, holder_installed: Path
) -> None:
    app = await node(store_url, f"127.0.0.1:{smtp_sink.port}")
    _, text = await asyncio.to_thread(send, app.ports[0], HELD)
    held_id = text.rpartition(" ")[2]
    conf = conf_of(app)
    # The listener's address in the file is port 0: point the rescan at the real one.
    toml = (conf / "mailgate.toml").read_text()
    (conf / "mailgate.toml").write_text(toml.replace("127.0.0.1:0", f"127.0.0.1:{app.ports[0]}"))
    rescanned = await asyncio.to_thread(cli, conf, holder_installed, "release", held_id, "--rescan")
    assert rescanned.returncode == 0, rescanned.stdout + rescanned.stderr
    assert "via rescan via 127.0.0.1:" in rescanned.stdout
    rows = await held_rows(store_url)
    assert len(rows) == 2, "the chain held it again, as a new message"
    assert smtp_sink.messages() == []


async def test_delete_asks_and_filters_select(
    node: Node, store_url: str, smtp_sink: SmtpSink, holder_installed: Path
) -> None:
    app = await node(store_url, f"127.0.0.1:{smtp_sink.port}")
    await asyncio.to_thread(send, app.ports[0], HELD)
    await asyncio.to_thread(send, app.ports[0], HELD, ["carol@example.com"])
    conf = conf_of(app)
    unasked = await asyncio.to_thread(cli, conf, holder_installed, "delete", "--recipient", "carol")
    assert unasked.returncode == 2
    assert "add --yes" in unasked.stderr
    assert len(await held_rows(store_url)) == 2
    older = await asyncio.to_thread(cli, conf, holder_installed, "list", "--older-than", "1h")
    assert older.returncode == 1
    deleted = await asyncio.to_thread(
        cli, conf, holder_installed, "delete", "--recipient", "CAROL@", "--yes"
    )
    assert deleted.returncode == 0 and deleted.stdout == "1 message(s) deleted\n"
    (left,) = await held_rows(store_url)
    assert [r.address for r in left.recipients] == ["bob@example.org"]


async def test_held_messages_expire_after_retention_days(
    node: Node, store_url: str, smtp_sink: SmtpSink
) -> None:
    app = await node(
        store_url, f"127.0.0.1:{smtp_sink.port}", retention_days=2 / 86400, expire_interval=0.3
    )
    await asyncio.to_thread(send, app.ports[0], HELD)
    assert len(await held_rows(store_url)) == 1
    deadline = time.monotonic() + 15
    while await held_rows(store_url):
        assert time.monotonic() < deadline, "never expired"
        await asyncio.sleep(0.3)


async def test_release_goes_into_the_queue_when_there_is_one(
    node: Node, store_url: str, smtp_sink: SmtpSink, holder_installed: Path
) -> None:
    app = await node(store_url, f"127.0.0.1:{smtp_sink.port}")
    _, text = await asyncio.to_thread(send, app.ports[0], HELD)
    held_id = text.rpartition(" ")[2]
    conf = conf_of(app)
    await app.stop()
    toml = (conf / "mailgate.toml").read_text()
    hop = f'[queue]\nnext_hop = "127.0.0.1:{smtp_sink.port}"\nmin_backoff = 0.5\n'
    (conf / "mailgate.toml").write_text(toml + hop)
    released = await asyncio.to_thread(cli, conf, holder_installed, "release", held_id)
    assert released.returncode == 0, released.stdout + released.stderr
    assert "via queue: bob@example.org: 250 2.0.0 queued as " in released.stdout
    assert smtp_sink.messages() == [], "queued, not sent by the command"
    queued = App(conf, configure_logs=False)  # a node with the queue delivers it
    await queued.start()
    try:
        (arrived,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 20)
    finally:
        await queued.stop()
    assert arrived.header("Subject") == "please hold <script>alert(1)</script>"
