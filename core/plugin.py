"""The markers plugin authors use, and the entry-point group plugins register in."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from mailgate.store.settings import StoreSettings

PROJECT = "mailgate"
ENTRY_POINT_GROUP = "mailgate.plugins"
"""Bundled and third-party plugins alike: ``[project.entry-points."mailgate.plugins"]``."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Mark a plugin method as a hook implementation: ``@hookimpl async def on_rcpt(...)``."""


@dataclasses.dataclass(frozen=True, slots=True)
class PluginContext:
    """What the app gives a plugin that runs work of its own beside the hooks.

    A plugin instance with ``async def start(self, context)`` and ``async def stop(self)``
    is started when ``mailgate serve`` starts (and, after a reload, its new instance is
    started before the old one is stopped), and stopped at shutdown. ``mailgate try`` and
    ``check-config`` start nothing.
    """

    store: StoreSettings
    """The ``[store]`` table: the database the plugin may keep its state in."""
    node: str
    """This node's name (``[queue] node_id``, or the host name)."""
    registry: CollectorRegistry | None = None
    """The app's Prometheus registry, when ``[metrics]`` is set."""
    queue: bool = False
    """True when this node delivers from the queue (``[queue]``)."""
    plugins: tuple[object, ...] = ()
    """The instances of the plugin chain this plugin is part of, in calling order (to work
    with a neighbour: the reports plugin signs with the dkim plugin's keys)."""
