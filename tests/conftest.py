"""Shared pytest fixtures: every fixture defined in a ``tests/peers`` module is exported here.

So a new peer module (``tests/peers/clamd.py`` with a ``clamd`` fixture) needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

import tests.peers


def _export_peer_fixtures() -> None:
    for info in pkgutil.iter_modules(tests.peers.__path__):
        module = importlib.import_module(f"tests.peers.{info.name}")
        for name, value in vars(module).items():
            if getattr(value, "_pytestfixturefunction", None) is not None or (
                type(value).__name__ == "FixtureFunctionDefinition"
            ):
                globals()[name] = value


_export_peer_fixtures()
