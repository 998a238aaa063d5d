"""The configuration examples in docs/ are valid: each ```toml block that names its file loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailgate.loader import load_config

DOCS = Path(__file__).parent.parent.parent / "docs"
BLOCK = re.compile(r"```toml\n# conf\.d/(\S+\.toml)[^\n]*\n(.*?)```", re.S)
EXAMPLES = [
    (f"{doc.name}:{name}", name, text)
    for doc in sorted(DOCS.rglob("*.md"))
    for name, text in BLOCK.findall(doc.read_text())
]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize(("where", "name", "text"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_loads(tmp_path: Path, where: str, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    config = load_config(tmp_path)
    config.pipeline()
