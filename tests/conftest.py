"""The peer fixtures, the ``peer`` marker and the event loop every async test runs on.

Every fixture of the ``tests/peers`` modules below is available to every test. A test that uses
one, directly or through another fixture, starts a real daemon and is marked ``peer``:
``pytest -m "not peer"`` runs the rest, which need neither root nor any daemon.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from types import ModuleType

import pytest

from mailgate import event_loop
from tests import event_loops

# `mailgate serve` runs one worker per core unless the configuration says otherwise; the
# suite's servers are single processes (as before workers existed) unless a test (tests/workers)
# sets `[mailgate] workers` itself.
os.environ.setdefault("MAILGATE_WORKERS", "1")

# The peer modules import one another; registered before the first import, all are rewritten.
pytest.register_assert_rewrite("tests.peers")

pytest_plugins = [
    "tests.peers.certificate",
    "tests.peers.clamav_milter",
    "tests.peers.clamd",
    "tests.peers.dns",
    "tests.peers.haproxy",
    "tests.peers.milter_probe",
    "tests.peers.opendkim",
    "tests.peers.opendmarc",
    "tests.peers.ports",
    "tests.peers.postfix",
    "tests.peers.postgres",
    "tests.peers.process",
    "tests.peers.prometheus",
    "tests.peers.redis",
    "tests.peers.rspamd",
    "tests.peers.slapd",
    "tests.peers.smtp_sink",
    "tests.peers.spamass_milter",
    "tests.peers.spamd",
    "tests.peers.tls_terminator",
    "tests.peers.workdir",
]
"""Every ``tests/peers`` module (tests/test_peers.py checks that none is missing)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``peer`` every test whose fixtures (the whole closure) include a peer fixture."""
    names = peer_fixture_names(config)
    for item in items:
        if names.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.peer)


def peer_fixture_names(config: pytest.Config) -> set[str]:
    """The fixtures the ``tests/peers`` modules define (their `pytest_plugins` registration)."""
    names: set[str] = set()
    for module_name in pytest_plugins:
        module = config.pluginmanager.get_plugin(module_name)
        assert isinstance(module, ModuleType), f"{module_name} is not registered"
        names.update(
            getattr(value, "name", None) or name
            for name, value in vars(module).items()
            if is_fixture(value, module)
        )
    return names


def is_fixture(value: object, module: ModuleType) -> bool:
    """True for a ``@pytest.fixture`` written in `module` (not one it imports): an object made
    by pytest's fixture module that says it comes from `module`."""
    return (
        type(value).__module__ == pytest.fixture.__module__
        and getattr(value, "__module__", None) == module.__name__
    )


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
