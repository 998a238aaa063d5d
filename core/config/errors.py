"""`ConfigError`: a bad setting, told as file, key, what was found and what was expected."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any


class Text(str):
    """A `found` that is shown as is, not as a value (``unknown key``, ``nothing``)."""

    __slots__ = ()


MISSING = Text("nothing")
"""The `found` of a required key that is absent."""


def show_value(value: Any) -> str:
    """A value as the administrator wrote it, with its TOML-ish type: ``42 (int)``."""
    if isinstance(value, Text):
        return str(value)
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (bool)"
    if isinstance(value, str):
        return f"{json.dumps(value, ensure_ascii=False)} (str)"
    names: dict[type, str] = {list: "array", tuple: "array", dict: "table"}
    kind = names.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


class ConfigError(ValueError):
    """One bad setting. ``str()`` reads::

        conf.d/mailgate.toml: relay.address: found 42 (int), expected "host:port"

    `file` is the file it came from (or ``--listen`` for a command-line option), `key` the dotted
    path of the setting, `found` the value found (shown with its type) and `expected` a short
    description of what would have been right.
    """

    def __init__(self, file: str, key: str, found: Any, expected: str, hint: str = "") -> None:
        self.file = file
        self.key = key
        self.found = found
        self.expected = expected
        self.hint = hint
        text = f"{file}: {key}: found {show_value(found)}, expected {expected}"
        super().__init__(f"{text} ({hint})" if hint else text)

    @classmethod
    def unknown_key(cls, file: str, key: str, name: str, known: Iterable[str]) -> ConfigError:
        """An unknown key `name` (full path `key`), with a "did you mean" hint when one is close."""
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        expected = "one of " + ", ".join(known) if known else "no keys here"
        hint = f'did you mean "{close[0]}"?' if close else ""
        return cls(file, key, Text("an unknown key"), expected, hint)


class PluginError(ConfigError):
    """A plugin class that breaks the plugin contract (`mailgate.hookspecs`). ``str()`` reads::

        conf.d/20-foo.toml: plugin foo: hook on_recipient: no such hook (did you mean on_rcpt?)

    `file` is the file that enabled the plugin, `key` is ``plugin``, `found` the plugin's name;
    `where` is the part of the class at fault (``hook on_rcpt``, ``Settings``; empty when
    `reason` says it) and `reason` what is wrong with it.
    """

    def __init__(self, file: str, plugin: str, where: str, reason: str) -> None:
        super().__init__(file, "plugin", plugin, "a plugin that keeps the plugin contract", reason)
        self.plugin = plugin
        self.where = where
        self.reason = reason
        self.args = (f"{file}: plugin {plugin}: {where + ': ' if where else ''}{reason}",)
