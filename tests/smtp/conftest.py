"""Fixtures for the SMTP listener tests: gateways in front of a recording or real egress."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from mailgate.egress import Egress
from mailgate.relay import RelayEgress, RelaySettings
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.helpers import Gateway, RecordingEgress

GatewayFactory = Callable[..., Gateway]


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
            address=f"{host}:{port}",
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


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, object]]]:
    """structlog lines as dicts, with the context variables merged in."""
    lines: list[dict[str, object]] = []
    old = structlog.get_config()

    def keep(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
        lines.append(dict(event))
        return json.dumps(event, default=str)

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    yield lines
    structlog.configure(**old)
