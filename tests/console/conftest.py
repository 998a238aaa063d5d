"""The console tests: a node with the console on, a held message, and a real headless
Chromium (Debian's, driven by chromedriver) as the browser."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from mailgate.app import App
from mailgate.config_dump import toml_value
from tests.quarantine.conftest import holder_installed

__all__ = ["holder_installed"]

LOGIN, PASSWORD = "alice@example.org", "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def password_file(path: Path) -> Path:
    from mailgate.plugins.auth_file import ScryptHash

    path.write_text(f"{LOGIN}:{ScryptHash.make(PASSWORD)}\n")
    return path


@pytest.fixture
async def console_node(
    tmp_path: Path, holder_installed: Path, smtp_sink_address: str
) -> AsyncIterator[App]:
    """A node relaying to the sink, holding what `holder` holds, with the console on."""
    conf = tmp_path / "conf"
    conf.mkdir()
    lines = [
        "[store]", f"url = {toml_value(f'sqlite:///{tmp_path}/store/mailgate.db')}",
        "[console]", 'address = "127.0.0.1:0"',
        "[relay]", f"address = {toml_value(smtp_sink_address)}", 'starttls = "never"',
        "[[listener]]", 'address = "127.0.0.1:0"',
    ]  # fmt: skip
    (conf / "mailgate.toml").write_text("\n".join(lines) + "\n")
    (conf / "10-holder.toml").write_text("")
    users = password_file(tmp_path / "users")
    (conf / "30-auth_file.toml").write_text(f"path = {toml_value(str(users))}\n")
    app = App(conf, configure_logs=False)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
def smtp_sink_address(smtp_sink) -> str:  # type: ignore[no-untyped-def]
    return f"127.0.0.1:{smtp_sink.port}"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, with no network but loopback worth speaking of, and an alert
    handler that fails the test (a script that ran would show one)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1200,900",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
