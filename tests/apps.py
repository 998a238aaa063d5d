"""`started_apps()`: mailgate `App`s a test starts, all stopped when it ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mailgate.app import App


class StartedApps:
    """The apps started so far, in order; `len` is how many (to name each one's conf.d)."""

    def __init__(self) -> None:
        self.apps: list[App] = []

    def __len__(self) -> int:
        return len(self.apps)

    async def start(self, conf: Path, **options: Any) -> App:
        """An `App` on `conf` (with `App`'s keyword options, logs left alone), started."""
        app = App(conf, configure_logs=False, **options)
        await app.start()
        self.apps.append(app)
        return app


@contextlib.asynccontextmanager
async def started_apps() -> AsyncIterator[StartedApps]:
    """Start apps inside the block; every one is stopped when it ends."""
    started = StartedApps()
    try:
        yield started
    finally:
        for app in started.apps:
            await app.stop()
