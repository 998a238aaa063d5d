"""mailgate's configuration: settings dataclasses checked against TOML tables.

- `load_settings(cls, table, source=...)` builds a settings dataclass from a TOML table and
  raises `ConfigError` (file, key, found, expected) when a key is unknown or a value is wrong.
- `Dynamic[T]`: a setting that may be a list of ``{ if = "<CEL>", then = T }`` ending in
  ``{ else = T }``, read with ``.value(session, transaction)``; `fixed_dynamics` lets code
  build such settings from plain values.
- `HostPort`, `Networks`, `Check`: extra checks for settings fields; `is_host_port` and
  `split_host_port` are `mailgate.sockaddr`'s one ``HOST:PORT`` parser.

A plugin declares its settings as a dataclass named ``Settings`` on the plugin class and takes
an instance of it in ``__init__(self, settings)``.
"""

from typing import Any

from mailgate.config.dynamic import Dynamic
from mailgate.config.errors import ConfigError, PluginError
from mailgate.config.settings import (
    Check,
    HostPort,
    Networks,
    convert,
    describe,
    fixed_dynamics,
    load_settings,
)
from mailgate.sockaddr import is_host_port
from mailgate.sockaddr import parse_host_port as split_host_port

PluginSettings = Any
"""Whatever settings dataclass a plugin declares as its ``Settings`` attribute."""

__all__ = [
    "Check",
    "ConfigError",
    "Dynamic",
    "HostPort",
    "Networks",
    "PluginError",
    "PluginSettings",
    "convert",
    "describe",
    "fixed_dynamics",
    "is_host_port",
    "load_settings",
    "split_host_port",
]
