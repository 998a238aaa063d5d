"""Fixtures for the SMTP listener tests: gateways in front of a recording or real egress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import Dynamic
from mailgate.egress import Egress
from mailgate.relay import RelayEgress, RelaySettings
from tests.logs import captured_logs
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.helpers import Gateway, RecordingEgress

GatewayFactory = Callable[..., Gateway]

__all__ = ["captured_logs"]


@pytest.fixture
def gateway_factory() -> Iterator[GatewayFactory]:
    """``gateway_factory(egress=None, plugins=(), **settings)``: a started gateway (the egress
    defaults to a `RecordingEgress`); stopped after the test."""
    started: list[Gateway] = []

    def factory(egress: Egress | None = None, plugins: Any = (), **settings: Any) -> Gateway:
        gateway = Gateway(egress or RecordingEgress(), plugins, **settings).start()
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


def relay_to(host: str, port: int, quarantine_dir: Path | str) -> RelayEgress:
    """The real relay egress pointed at a test peer."""
    return RelayEgress(
        RelaySettings(
            address=Dynamic.fixed(f"{host}:{port}"),
            helo_name="mailgate.test",
            connect_timeout=5.0,
            command_timeout=10.0,
            data_timeout=30.0,
            quarantine_dir=str(quarantine_dir),
        )
    )


@pytest.fixture
def sink_gateway(gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path) -> Gateway:
    """A gateway relaying to a real smtp-sink."""
    return gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path / "quarantine"))
