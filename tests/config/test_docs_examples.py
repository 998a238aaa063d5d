"""The configuration examples in docs/ are valid: each ```toml block that names its file loads."""

from __future__ import annotations

import re
import subprocess
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


KEY_FILE = re.compile(r'key_file = "([^"]+)"')


def with_real_keys(text: str, directory: Path) -> str:
    """`text` with every ``key_file`` path pointing at a real RSA key made for the test."""
    for n, path in enumerate(dict.fromkeys(KEY_FILE.findall(text))):
        key = directory / f"key{n}.pem"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(key)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        text = text.replace(f'"{path}"', f'"{key}"')
    return text


@pytest.mark.parametrize(("where", "name", "text"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_loads(tmp_path: Path, where: str, name: str, text: str) -> None:
    (tmp_path / name).write_text(with_real_keys(text, tmp_path))
    config = load_config(tmp_path)
    config.pipeline()
