"""Fixtures for the limits tests: mailgate with a limits file, relaying into a real smtp-sink."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.app import App
from tests.apps import started_apps
from tests.peers.smtp_sink import SmtpSink

Gateway = Callable[..., Awaitable[App]]
"""``await gateway(plugin_toml, core_toml="", name="15-limits.toml")``: a started `App`."""


@pytest.fixture
async def gateway(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Gateway]:
    """Start mailgate apps on loopback (each its own conf.d), relaying to smtp-sink; all are
    stopped after the test."""
    async with started_apps() as apps:
        numbers = itertools.count(1)

        async def start(plugin_toml: str, core_toml: str = "", name: str = "15-limits.toml") -> App:
            conf = tmp_path / f"conf{next(numbers)}"
            conf.mkdir()
            (conf / "mailgate.toml").write_text(core_toml)
            (conf / name).write_text(plugin_toml)
            return await apps.start(
                conf, listen="127.0.0.1:0", relay=f"{smtp_sink.host}:{smtp_sink.port}"
            )

        yield start
