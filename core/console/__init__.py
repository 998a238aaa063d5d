"""The operator's web console (``[console] address``): an overview of what mailgate decided,
the quarantine, the queue, behind a sign-in against the same credential plugins as SMTP AUTH.

Served by mailgate's own event loop (uvicorn running a Starlette app), off by default.
"""

from mailgate.console.activity import Activity
from mailgate.console.server import ConsoleServer
from mailgate.console.settings import ConsoleSettings

__all__ = ["Activity", "ConsoleServer", "ConsoleSettings"]
