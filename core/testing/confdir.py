"""`ConfDir`: a configuration directory a test writes, as an administrator would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailgate.config_dump import toml_value
from mailgate.loader import Config, load_config


class ConfDir:
    """A ``conf.d`` in `path`: ``mailgate.toml`` and one ``NN-name.toml`` per plugin.

    Plugin files are numbered in the order they are added (``10-``, ``20-``, ...), so they run
    in that order, after the built-in ``relay_control`` and ``sender_auth``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._number = 0

    def core(self, text: str = "", **tables: dict[str, Any]) -> Path:
        """Write ``mailgate.toml``: TOML `text` as it is, or tables as keywords
        (``core(relay_control={"networks": ["192.0.2.0/24"]})``)."""
        body = text + "".join(_table(name, values) for name, values in tables.items())
        target = self.path / "mailgate.toml"
        target.write_text(body)
        return target

    def plugin(self, name: str, text: str = "", **settings: Any) -> Path:
        """Enable plugin `name` with its settings (TOML `text`, or keywords); returns the file.

        ``plugin("subject_tag", tag="[X]", when='client.ip != "192.0.2.9"')`` writes
        ``10-subject_tag.toml`` with those two keys.
        """
        self._number += 10
        body = text + "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
        target = self.path / f"{self._number:02d}-{name}.toml"
        target.write_text(body)
        return target

    def load(self) -> Config:
        """The configuration as mailgate reads it (`mailgate.config.ConfigError` if it is bad)."""
        return load_config(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n\n"
