"""Fixtures for the milter bridge tests: pymilter test milters, and gateways that call milters."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import Dynamic, load_settings
from mailgate.pipeline import EnabledPlugin
from mailgate.plugins.milter import MilterPlugin, MilterSettings
from mailgate.relay import RelayEgress, RelaySettings
from tests.peers.ports import free_port
from tests.peers.process import Daemon, connect_probe, start_daemon
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.helpers import Gateway

ROOT = Path(__file__).resolve().parents[3]

ActionMilterFactory = Callable[..., str]
BridgeFactory = Callable[..., Gateway]


@pytest.fixture
def action_milter_factory(tmp_path: Path) -> Iterator[ActionMilterFactory]:
    """``factory(tag="A", version=6, unix=False)``: start `action_milter.py`, return its
    address as Postfix spells it (``inet:127.0.0.1:PORT`` or ``unix:/path``)."""
    daemons: list[Daemon] = []

    def factory(tag: str = "A", version: int = 6, unix: bool = False) -> str:
        workdir = tmp_path / f"milter-{tag}-{len(daemons)}"
        workdir.mkdir()
        if unix:
            path = workdir / "milter.sock"
            socket_spec, spec = f"unix:{path}", f"unix:{path}"
            probe: Callable[[], bool] = path.exists
        else:
            port = free_port()
            socket_spec, spec = f"inet:{port}@127.0.0.1", f"inet:127.0.0.1:{port}"
            probe = connect_probe("127.0.0.1", port)
        argv = [sys.executable, "-m", "tests.plugins.milter.action_milter", socket_spec, tag]
        daemons.append(
            start_daemon(
                f"action-milter-{tag}",
                [*argv, str(version)],
                workdir=workdir,
                probe=probe,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                grace=0.5,
                stop_signal=signal.SIGKILL,
            )
        )
        return spec

    yield factory
    for daemon in daemons:
        daemon.stop()


def milter(address: str, **settings: Any) -> EnabledPlugin:
    """A milter plugin as one conf.d file would enable it."""
    plugin = MilterPlugin(MilterSettings(address=address, **settings))
    return EnabledPlugin(plugin.name, plugin, timeout=30.0)


def milter_list(*entries: dict[str, Any]) -> EnabledPlugin:
    """A milter plugin as one conf.d file with ``milters = [...]`` would enable it (read
    through the configuration loader's checks)."""
    settings = load_settings(MilterSettings, {"milters": list(entries)}, source="40-milters.toml")
    return EnabledPlugin("milters", MilterPlugin(settings), timeout=30.0)


@pytest.fixture
def bridge_factory(smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[BridgeFactory]:
    """``factory(*plugins, **listener_settings)``: an SMTP listener with these plugins, relaying
    to the test's smtp-sink with the real relay egress; quarantine in ``tmp_path/quarantine``."""
    started: list[Gateway] = []

    def factory(*plugins: EnabledPlugin, **settings: Any) -> Gateway:
        egress = RelayEgress(
            RelaySettings(
                address=Dynamic.fixed(f"{smtp_sink.host}:{smtp_sink.port}"),
                helo_name="mailgate.test",
                quarantine_dir=str(tmp_path / "quarantine"),
            )
        )
        gateway = Gateway(egress, plugins, **settings).start()
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()
