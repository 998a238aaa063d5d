"""`captured_logs`: structlog lines as dicts, with the context variables (session, tx) merged in
and the level added, for tests that read the log as an operator would."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog line of the test, as a dict (``event``, ``level``, ``session``, ...)."""
    lines: list[dict[str, Any]] = []
    old = structlog.get_config()

    def keep(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
        lines.append(dict(event))
        return json.dumps(event, default=str)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            keep,
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    yield lines
    structlog.configure(**old)


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The lines whose event is `name`."""
    return [line for line in lines if line["event"] == name]
