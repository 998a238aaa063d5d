"""Which asyncio event loop ``mailgate serve`` runs on: uvloop when it is installed, else asyncio's.

uvloop (libuv) spends less CPU per socket operation than asyncio's selector loop. Measured with
the milter bridge to opendkim (``tests/bench/bench_bridge.py``, 10 KiB, 20 sessions), mailgate's
CPU per message went from 2.19 to 1.97 ms (all stages) and from 1.98 to 1.79 ms
(``stages = ["message"]``). ``[mailgate] event_loop`` chooses: ``auto`` (the default), ``uvloop``
(fail at start-up if it is missing) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal

EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def uvloop_available() -> bool:
    """True if the uvloop package can be imported here."""
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: EventLoopChoice) -> Literal["uvloop", "asyncio"]:
    """The loop `choice` means on this machine (``auto``: uvloop if installed)."""
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return choice


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function that makes a new event loop of the kind `choice` resolves to."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (Python's default: 700).

A message allocates a few hundred tracked objects (frames, coroutines, dicts) that reference
counting frees at once; at 700 the collector ran every few messages and took ~4% of the milter
listener's CPU. Memory in cycles waits a little longer for its collection, nothing more."""


def tune_gc() -> None:
    """Collect less often, and never again look at what start-up made (`gc.freeze`)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run(main: Coroutine[Any, Any, None], choice: EventLoopChoice) -> None:
    """Run `main` to completion on a new loop of the chosen kind (like `asyncio.run`), with the
    garbage collector tuned for a server (`tune_gc`)."""
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        runner.run(main)
