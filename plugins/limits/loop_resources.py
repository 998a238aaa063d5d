"""Close a connection pool when its event loop ends, for plugins that open one on first use.

Plugins are built at load (and again at each reload) outside any loop, so a plugin that needs
a connection (Redis, the store) opens it on first use and keeps it per loop. `close_with_loop`
starts a task that waits for the loop's end: ``asyncio.Runner`` (what ``mailgate serve`` and
the tests run in) cancels every task when it closes, and the task then awaits `close`, so no
socket or database thread outlives the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mailgate.logging import get_logger

log = get_logger("mailgate.plugins")

_keepers: set[asyncio.Task[None]] = set()


def close_with_loop(name: str, close: Callable[[], Awaitable[object]]) -> None:
    """Await `close` when the running loop shuts down (its tasks are cancelled)."""
    task = asyncio.get_running_loop().create_task(_keep(close), name=f"close {name} at exit")
    _keepers.add(task)
    task.add_done_callback(_keepers.discard)


async def _keep(close: Callable[[], Awaitable[object]]) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        try:
            await close()
        except (Exception, asyncio.CancelledError) as exc:
            log.warning("closing at exit failed", error=str(exc) or type(exc).__name__)
