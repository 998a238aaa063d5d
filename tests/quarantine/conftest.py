"""The quarantine tests: a node whose plugin holds mail, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.app import App
from mailgate.config_dump import toml_value
from tests.apps import started_apps
from tests.queue.conftest import store_url

__all__ = ["store_url"]

HOLDER_DIST = {
    "METADATA": "Metadata-Version: 2.1\nName: holder-plugin\nVersion: 0.1\n",
    "entry_points.txt": "[mailgate.plugins]\nholder = tests.quarantine.holding_plugin:Holder\n",
}

Node = Callable[..., Awaitable[App]]


@pytest.fixture
def holder_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The `holder` plugin, registered for this test (an entry point on sys.path)."""
    site = tmp_path / "site"
    dist = site / "holder_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    for name, text in HOLDER_DIST.items():
        (dist / name).write_text(text)
    monkeypatch.syspath_prepend(str(site))
    return site


def write_conf(directory: Path, store_url: str, relay: str, **quarantine: object) -> Path:
    """A node that relays to `relay`, holds with `holder`, and keeps the quarantine in the
    store at `store_url`."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["[store]", f"url = {toml_value(store_url)}", "[quarantine]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in quarantine.items()]
    lines += ["[relay]", f"address = {toml_value(relay)}", 'starttls = "never"']
    lines += ["[[listener]]", 'address = "127.0.0.1:0"']
    (directory / "mailgate.toml").write_text("\n".join(lines) + "\n")
    (directory / "10-holder.toml").write_text("")
    return directory


@pytest.fixture
async def node(tmp_path: Path, holder_installed: Path) -> AsyncIterator[Node]:
    """``await node(store_url, relay)``: a started `App` (stopped after the test)."""
    async with started_apps() as apps:

        async def start(store_url: str, relay: str, **quarantine: object) -> App:
            conf = write_conf(tmp_path / f"conf{len(apps)}", store_url, relay, **quarantine)
            return await apps.start(conf)

        yield start
