"""The console's queue and DMARC pages in headless Chromium, on a node with a queue whose next
hop is down (so mail stays queued) and the reports plugin on."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from sqlalchemy import select

from mailgate.app import App
from mailgate.config_dump import toml_value
from mailgate.plugins.reports import records
from mailgate.store import Store, StoreSettings
from mailgate.store.schema import messages, recipients
from tests.console.conftest import password_file
from tests.console.test_console import click_and_wait, console_url, shot, sign_in
from tests.peers.ports import free_port


@pytest.fixture
async def queue_node(tmp_path: Path) -> AsyncIterator[App]:
    conf = tmp_path / "conf"
    conf.mkdir()
    store = f"sqlite:///{tmp_path}/store/mailgate.db"
    lines = [
        "[store]", f"url = {toml_value(store)}",
        "[console]", 'address = "127.0.0.1:0"',
        "[queue]", f'next_hop = "127.0.0.1:{free_port()}"', "poll_interval = 0.2",
        "min_backoff = 3600",
        "[relay]", "connect_timeout = 1.0", 'starttls = "never"',
        "[[listener]]", 'address = "127.0.0.1:0"', 'egress = "queue"',
    ]  # fmt: skip
    (conf / "mailgate.toml").write_text("\n".join(lines) + "\n")
    users = password_file(tmp_path / "users")
    (conf / "30-auth_file.toml").write_text(f"path = {toml_value(str(users))}\n")
    (conf / "95-reports.toml").write_text(
        'org_name = "Example"\ncontact = "dmarc@example.net"\nsender = "dmarc@example.net"\n'
    )
    app = App(conf, configure_logs=False)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def queued_states(store: Store) -> list[str]:
    """Each queued message's state: held, or its recipients' one state."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(messages.c.held_since, recipients.c.state).join(
                recipients, recipients.c.message_id == messages.c.id
            )
        )
        return ["held" if r.held_since is not None else r.state for r in rows]


def send(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.net", ["bob@example.org"], b"Subject: queued\r\n\r\nhi\r\n")
        return "sent"


def evaluation(source: str, result: str, now: float) -> dict[str, object]:
    """A row as the reports plugin records one evaluation (`records.evaluation_row`)."""
    begin = int(now) // 86400 * 86400
    return {
        "recorded": now, "period_begin": begin, "period_end": begin + 86400,
        "policy_domain": "example.com", "header_from": "example.com",
        "envelope_from": "example.com", "source_ip": source, "result": result,
        "disposition": "none", "dkim_aligned": "pass" if result == "pass" else "fail",
        "spf_aligned": "fail", "reasons": "", "auth_results": '{"dkim":[],"spf":null}',
        "policy": "{}", "rua": "",
    }  # fmt: skip


async def test_queue_actions_and_the_dmarc_page(
    queue_node: App, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    app = queue_node
    await asyncio.to_thread(send, app.ports[0])
    store = Store(StoreSettings(url=f"sqlite:///{tmp_path}/store/mailgate.db"))
    await store.open()
    try:
        now = time.time()
        rows = [evaluation("192.0.2.10", "pass", now)] * 3 + [
            evaluation("198.51.100.7", "fail", now)
        ]
        await store.transaction(lambda conn: records.write_evaluations(conn, rows))
        deadline = time.monotonic() + 20
        while (await queued_states(store)) != ["deferred"]:
            assert time.monotonic() < deadline, "the message was never tried"
            await asyncio.sleep(0.2)

        def in_browser() -> tuple[str, str]:
            sign_in(browser, app)
            browser.get(console_url(app, "/queue"))
            shot(browser, "queue")
            click_and_wait(browser, "queue-hold-0")
            held = browser.find_element(By.ID, "notice").text
            browser.get(console_url(app, "/reports?domain=example.com"))
            shot(browser, "dmarc")
            page = browser.find_element(By.TAG_NAME, "main").text
            assert browser.find_elements(By.ID, "sources"), page
            return held, browser.find_element(By.ID, "sources").text

        held, sources = await asyncio.to_thread(in_browser)
        assert held.endswith(": hold done")
        assert await queued_states(store) == ["held"]
        assert "192.0.2.10 3 100.0% 100.0% 0.0%" in sources
        assert "198.51.100.7 1 0.0% 0.0% 0.0%" in sources
    finally:
        await store.close()
