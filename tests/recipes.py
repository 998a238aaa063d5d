"""Reading a recipe's code blocks, so its tests run what the page shows."""

from __future__ import annotations

from pathlib import Path


def recipe_block(page: Path, name: str) -> str:
    """The code block after ``<!-- recipe: NAME -->`` in `page`, without its fences."""
    text = page.read_text()
    start = text.index(f"<!-- recipe: {name} -->")
    block = text[text.index("```", start) :]
    block = block[block.index("\n") + 1 :]
    return block[: block.index("```")]
