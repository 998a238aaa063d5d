"""A plugin for the quarantine tests: holds every message whose Subject says "hold"."""

from __future__ import annotations

from mailgate import Message, Verdict, hookimpl


class Holder:
    """Quarantines a message whose Subject contains "hold"."""

    reads = frozenset({"headers"})

    @hookimpl
    def on_message(self, message: Message) -> Verdict | None:
        if "hold" in (message.get("Subject") or "").lower():
            return Verdict.quarantine(reason="subject says hold")
        return None
