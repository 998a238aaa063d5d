"""A worker's side of the two-phase reload: ``prepare`` swaps nothing, ``abort`` drops it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailgate.app import App


async def orders(app: App, *words: str) -> list[str]:
    """Feed `words` to the app as its master would; the answers it sent back."""
    answers: list[str] = []
    app.notify = answers.append
    control = asyncio.StreamReader()
    for word in words:
        control.feed_data(word.encode() + b"\n")
    control.feed_eof()
    await app._obey(control)
    return answers


async def test_prepare_then_abort_keeps_the_running_chain(tmp_path: Path) -> None:
    (tmp_path / "20-add_header.toml").write_text('name = "X-Old"\n')
    app = App(tmp_path, listen="127.0.0.1:0", relay="127.0.0.1:1", configure_logs=False)
    running = app.pipeline
    (tmp_path / "20-add_header.toml").write_text('name = "X-New"\n')
    assert await orders(app, "prepare", "abort") == ["prepared", "aborted"]
    assert app.pipeline is running
    assert app.reloads == 0


async def test_a_worker_that_cannot_prepare_says_refused_and_swaps_nothing(tmp_path: Path) -> None:
    app = App(tmp_path, listen="127.0.0.1:0", relay="127.0.0.1:1", configure_logs=False)
    running = app.pipeline
    (tmp_path / "20-add_header.toml").write_text("no_such_key = 1\n")
    assert await orders(app, "prepare", "commit") == ["refused", "aborted"]
    assert app.pipeline is running


async def test_prepare_then_commit_swaps_the_chain(tmp_path: Path) -> None:
    app = App(tmp_path, listen="127.0.0.1:0", relay="127.0.0.1:1", configure_logs=False)
    (tmp_path / "20-add_header.toml").write_text('name = "X-New"\n')
    assert await orders(app, "prepare", "commit") == ["prepared", "reloaded"]
    assert [p.name for p in app.pipeline.plugins][-1] == "add_header"
    assert app.reloads == 1
    await app.stop()
