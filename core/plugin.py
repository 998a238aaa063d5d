"""The markers plugin authors use, and the entry-point group plugins register in."""

from __future__ import annotations

import pluggy

PROJECT = "mailgate"
ENTRY_POINT_GROUP = "mailgate.plugins"
"""Bundled and third-party plugins alike: ``[project.entry-points."mailgate.plugins"]``."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Mark a plugin method as a hook implementation: ``@hookimpl async def on_rcpt(...)``."""
