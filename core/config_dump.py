"""``mailgate config dump``: the effective configuration, every default shown, as TOML.

What ``postconf -n`` and ``rspamadm configdump`` are to their daemons: one listing of what
mailgate will run with, file by file — ``mailgate.toml``'s tables (each ``[[listener]]``, the
relay, the store, ...), then each enabled plugin in calling order with its run options
(``when``, ``timeout``, ``on_error``, ``concurrent``) and its settings. With ``non_default``
only the values that differ from the built-in default are listed, so what a site changed
stands out.

The output is TOML a person can read and paste back: a setting that is unset (``None``) is
shown as a comment, an expression as its source text, a per-transaction setting
(`mailgate.config.dynamic.Dynamic`) as its list of ``if``/``then`` rules.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

from mailgate.config.dynamic import Dynamic
from mailgate.expressions import Expression
from mailgate.loader import Config, PluginConfig
from mailgate.pipeline import ErrorPolicy

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_UNSET = object()
"""A field with no default: always shown."""

RUN_OPTIONS: dict[str, Any] = {
    "when": None,
    "timeout": 30.0,
    "on_error": ErrorPolicy.TEMPFAIL,
    "concurrent": False,
}
"""The run options every plugin table takes, with their defaults (see `mailgate.loader`)."""


def dump(config: Config, *, non_default: bool = False) -> str:
    """The whole `config` as commented TOML (see the module docstring)."""
    return "\n".join(_lines(config, non_default)).rstrip("\n") + "\n"


def _lines(config: Config, non_default: bool) -> Iterator[str]:
    core_file = str(config.directory / "mailgate.toml") if config.directory else "(built in)"
    yield f"# {core_file}"
    yield ""
    for table in ("mailgate", "logging", "metrics", "dns", "authentication_results", "relay"):
        yield from _table(table, getattr(config, table), non_default)
    for listener in config.listeners:
        origin = listener.key or "from the command line or built in"
        yield f"[[listener]]  # {origin}: {listener.source}"
        yield f"type = {toml_value(listener.type)}"
        yield from _fields(listener.settings, non_default, prefix="")
        yield ""
    yield from _table("quarantine", config.quarantine, non_default)
    if config.queue is not None or config.quarantine.backend == "store":
        yield from _table("store", config.store, non_default)
    if config.queue is not None:
        yield from _table("queue", config.queue, non_default)
    for built_in in (config.relay_control, config.sender_auth):
        if built_in is not None:
            yield from _plugin(built_in, non_default, table=built_in.name)
    for plugin in config.plugins:
        yield f"# {plugin.source}: plugin {plugin.name}"
        yield ""
        yield from _plugin(plugin, non_default, table=None)
    for name, source in config.disabled:
        yield f"# {source}: plugin {name}, enabled = false"
        yield ""


def _table(name: str, settings: Any, non_default: bool) -> Iterator[str]:
    body = list(_fields(settings, non_default, prefix=""))
    if body or not non_default:
        yield f"[{name}]"
        yield from body
        yield ""


def _plugin(plugin: PluginConfig, non_default: bool, table: str | None) -> Iterator[str]:
    """A plugin's run options and settings; `table`: its table in mailgate.toml (built in)."""
    lines: list[str] = []
    values = {
        "when": plugin.when,
        "timeout": plugin.timeout,
        "on_error": plugin.on_error,
        "concurrent": plugin.concurrent,
    }
    for key, value in values.items():
        if non_default and _same(value, RUN_OPTIONS[key]):
            continue
        lines.append(_assignment(key, value))
    if plugin.settings is not None and dataclasses.is_dataclass(plugin.settings):
        lines.extend(_fields(plugin.settings, non_default, prefix=""))
    if table is not None:
        if lines or not non_default:
            yield f"[{table}]  # {plugin.source}: built-in plugin, runs first"
            yield from lines
            yield ""
    else:
        yield from lines
        if lines:
            yield ""


def _fields(settings: Any, non_default: bool, prefix: str) -> Iterator[str]:
    """``key = value`` for each field of the dataclass `settings` (nested ones as dotted keys)."""
    if not dataclasses.is_dataclass(settings):
        return
    for f in dataclasses.fields(settings):
        if f.name.startswith("_") or not f.init:
            continue
        value = getattr(settings, f.name)
        key = f"{prefix}{_key(f.name)}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _fields(value, non_default, prefix=f"{key}.")
            continue
        if non_default and _same(value, _default(f)):
            continue
        yield _assignment(key, value)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _UNSET


def _same(value: Any, default: Any) -> bool:
    if default is _UNSET:
        return False
    try:
        return toml_value(value) == toml_value(default)
    except Exception:
        return False


def _assignment(key: str, value: Any) -> str:
    if value is None:
        return f"# {key} = (unset)"
    return f"{key} = {toml_value(value)}"


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def toml_value(value: Any) -> str:
    """`value` written as a TOML value (inline); what TOML cannot say is written as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, Expression):
        return toml_value(value.source)
    if isinstance(value, Dynamic):
        if value.is_fixed:
            return toml_value(value.default)
        rules = [
            f"{{ if = {toml_value(c.source)}, then = {toml_value(v)} }}" for c, v in value.rules
        ]
        rules.append(f"{{ else = {toml_value(value.default)} }}")
        return "[" + ", ".join(rules) + "]"
    if isinstance(value, PurePath | Path):
        return toml_value(str(value))
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return toml_value(str(value))
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return toml_value(str(value))
    if isinstance(value, re.Pattern):
        return toml_value(value.pattern)
    if isinstance(value, Mapping):
        items = (f"{_key(str(k))} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }" if value else "{}"
    if isinstance(value, list | tuple | set | frozenset):
        members = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return "[" + ", ".join(toml_value(v) for v in members) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        return toml_value(fields)
    return toml_value(str(value))
