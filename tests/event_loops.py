"""The event loop tests run mailgate on: the one ``mailgate serve`` would pick here (uvloop when it
is installed), or the one ``MAILGATE_TEST_LOOP`` names (``asyncio`` or ``uvloop``).

pytest-asyncio's tests get it through ``pytest_asyncio_loop_factories`` in ``tests/conftest.py``;
the harnesses that run a listener in a background thread call `new_loop`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Literal

from mailgate import event_loop

CHOICES = ("auto", "uvloop", "asyncio")


def chosen() -> Literal["uvloop", "asyncio"]:
    """The loop kind for this test run."""
    choice = os.environ.get("MAILGATE_TEST_LOOP", "auto")
    if choice not in CHOICES:
        raise ValueError(f"MAILGATE_TEST_LOOP={choice!r}: expected one of {', '.join(CHOICES)}")
    return event_loop.resolve(choice)  # type: ignore[arg-type]


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind."""
    return event_loop.loop_factory(chosen())()
