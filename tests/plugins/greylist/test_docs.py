"""The configuration examples of docs/plugins/limits.md and greylist.md load as shown, and the
docs name every setting the plugins have."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mailgate.loader import load_config
from mailgate.plugins.greylist import Greylist, GreylistSettings
from mailgate.plugins.limits import LimitRule, Limits, LimitsSettings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins"


def blocks(page: str) -> list[tuple[str, str]]:
    """The page's ``# conf.d/NAME`` TOML blocks: (file name, text), in order."""
    pattern = r"```toml\n# conf\.d/([\w.-]+)[^\n]*\n(.*?)```"
    found = re.findall(pattern, (DOCS / page).read_text(), re.S)
    return [(name, text) for name, text in found]


@pytest.mark.parametrize(
    ("page", "cls"), [("limits.md", Limits), ("greylist.md", Greylist)], ids=["limits", "greylist"]
)
def test_every_example_loads(tmp_path: Path, page: str, cls: type) -> None:
    examples = blocks(page)
    assert len(examples) >= 2
    for i, (name, text) in enumerate(examples):
        conf = tmp_path / f"conf{i}"
        conf.mkdir()
        (conf / name).write_text(text)
        plugins = load_config(conf).pipeline().plugins
        assert isinstance(plugins[-1].instance, cls), name


@pytest.mark.parametrize(
    ("page", "settings"),
    [("limits.md", LimitsSettings), ("limits.md", LimitRule), ("greylist.md", GreylistSettings)],
)
def test_every_setting_is_documented(page: str, settings: type) -> None:
    text = (DOCS / page).read_text()
    for f in dataclasses.fields(settings):
        if f.init:
            assert f"| `{f.name}` |" in text, f.name
