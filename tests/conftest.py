"""Shared pytest fixtures: every fixture defined in a ``tests/peers`` module is exported here.

So a new peer module (``tests/peers/clamd.py`` with a ``clamd`` fixture) needs no edit here.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import Callable

import pytest

import tests.peers
from mailgate import event_loop
from tests import event_loops


def _export_peer_fixtures() -> None:
    for info in pkgutil.iter_modules(tests.peers.__path__):
        module = importlib.import_module(f"tests.peers.{info.name}")
        for name, value in vars(module).items():
            if getattr(value, "_pytestfixturefunction", None) is not None or (
                type(value).__name__ == "FixtureFunctionDefinition"
            ):
                globals()[name] = value


_export_peer_fixtures()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async test on the loop ``mailgate serve`` uses by default (uvloop here), or on
    the one named by ``MAILGATE_TEST_LOOP`` (``asyncio`` or ``uvloop``)."""
    try:
        kind = event_loops.chosen()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return {kind: event_loop.loop_factory(kind)}
