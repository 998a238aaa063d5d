"""What a reload (SIGHUP) can apply, and what it must tell the administrator it did not.

A reload re-reads the configuration and swaps the plugin chain. Three things stand in its way,
and each has its piece here:

- Settings used only at start (listeners, ``[relay]``, ``[metrics] address``, ``[mailgate]``)
  keep their old values: `start_settings` and `restart_needed` name the keys that changed.
- A plugin installed after start (``pip install``, ``pip install -e``) is found only once the
  import system looks again: `InstalledPlugins.refresh` clears importlib's caches and reads the
  ``.pth`` files that appeared since start (an editable install adds its import path there).
- A plugin's modules are imported once; new code on disk is not run until a restart
  (re-importing in place would leave old and new objects mixed). `PluginCode` notices the
  change so it can be named in a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import site
import sys
from pathlib import Path
from typing import Any

from mailgate.loader import Config, PluginConfig


def start_settings(config: Config) -> dict[str, Any]:
    """Every setting of `config` that takes effect only at start, by its dotted key."""
    values: dict[str, Any] = {
        "mailgate.event_loop": config.mailgate.event_loop,
        "mailgate.hostname": config.mailgate.hostname,
        "mailgate.workers": config.mailgate.workers,
        "mailgate.worker_sockets": config.mailgate.worker_sockets,
        "metrics.address": config.metrics.address,
    }
    for f in dataclasses.fields(config.relay):
        values[f"relay.{f.name}"] = getattr(config.relay, f.name)
    for f in dataclasses.fields(config.store):
        values[f"store.{f.name}"] = getattr(config.store, f.name)
    if config.queue is not None:
        for f in dataclasses.fields(config.queue):
            values[f"queue.{f.name}"] = getattr(config.queue, f.name)
    for i, lc in enumerate(config.listeners):
        table = f"listener[{i}]"
        values[f"{table}.type"] = lc.type
        for f in dataclasses.fields(lc.settings):
            values[f"{table}.{f.name}"] = getattr(lc.settings, f.name)
    return values


def restart_needed(running: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose value in `new` differs from `running` (both from `start_settings`).

    A listener added or removed is named by its table alone (``listener[1]``).
    """
    changed: list[str] = []
    for key in dict.fromkeys([*running, *new]):
        if key in running and key in new:
            if running[key] != new[key]:
                changed.append(key)
            continue
        table = key.partition(".")[0]
        if table not in changed:
            changed.append(table)
    return changed


class InstalledPlugins:
    """Makes distributions installed after start visible to `importlib.metadata` and imports.

    Created at start, it notes the ``.pth`` files of the site directories; `refresh` runs the
    ones added since, as the interpreter runs them at its start.
    """

    def __init__(self) -> None:
        self._seen = {pth for directory in _site_dirs() for pth in directory.glob("*.pth")}

    def refresh(self) -> list[Path]:
        """Clear importlib's caches and read new ``.pth`` files; returns the files read."""
        importlib.invalidate_caches()
        added = []
        for directory in _site_dirs():
            for pth in sorted(directory.glob("*.pth")):
                if pth not in self._seen:
                    self._seen.add(pth)
                    site.addpackage(str(directory), pth.name, None)
                    added.append(pth)
        if added:
            importlib.invalidate_caches()
        return added


def _site_dirs() -> list[Path]:
    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [Path(d) for d in dirs if Path(d).is_dir()]


class PluginCode:
    """The source files of each plugin's package, with a digest taken when first recorded.

    `record` is called with each new chain; a plugin is recorded once, when it is first seen,
    because that is the code it keeps running until a restart.
    """

    def __init__(self) -> None:
        self._digests: dict[str, dict[str, str]] = {}

    def record(self, chain: list[PluginConfig]) -> None:
        """Note the source files of the plugins of `chain` not yet recorded."""
        for p in chain:
            if p.name not in self._digests:
                self._digests[p.name] = {f: _digest(f) for f in _source_files(p.cls)}

    def changed(self, chain: list[PluginConfig]) -> dict[str, list[str]]:
        """The plugins of `chain` whose source changed since recorded, with the changed files."""
        out: dict[str, list[str]] = {}
        for p in chain:
            files = [f for f, d in self._digests.get(p.name, {}).items() if _digest(f) != d]
            if files:
                out[p.name] = files
        return out


def _package(module: str) -> str:
    """The package a plugin's code lives in: ``mailgate.plugins.clamav``, ``mailgate_plugin_x``."""
    parts = module.split(".")
    if parts[:2] == ["mailgate", "plugins"]:
        return ".".join(parts[:3])
    return parts[0]


def _source_files(cls: type) -> list[str]:
    package = _package(cls.__module__)
    files = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and (name == package or name.startswith(package + ".")):
            files.append(path)
    return sorted(files)


def _digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "(gone)"
