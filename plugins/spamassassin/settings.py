"""The settings of the `spamassassin` plugin: the keys of ``conf.d/NN-spamassassin.toml``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

from mailgate.config import Check, Dynamic
from mailgate.sockaddr import is_socket_address

DEFAULT_REMOVE = [
    "X-Spam-Status",
    "X-Spam-Score",
    "X-Spam-Flag",
    "X-Spam-Level",
    "X-Spam-Report",
    "X-Spam-Checker-Version",
]


SpamdServer = Annotated[str, Check(is_socket_address, '"host:port" or "unix:/path"')]
"""One spamd address in the ``servers`` list."""


@dataclass(slots=True)
class SpamassassinSettings:
    """How to reach spamd, and what each score leads to.

    The thresholds and `user` may depend on the transaction (a list of ``{ if, then }`` with
    a final ``{ else }``), e.g. a lower reject threshold for unauthenticated clients.
    """

    servers: list[SpamdServer] = field(default_factory=lambda: ["127.0.0.1:783"])
    """spamd addresses, tried in order: ``"host:port"`` or ``"unix:/path/spamd.sock"``."""
    connect_timeout: float = 2.0
    """Seconds to wait for each connection before trying the next server."""
    scan_timeout: float = 20.0
    """Seconds for spamd's answer, per server (keep under the plugin's `timeout`)."""
    user: Dynamic[str] = field(default=Dynamic.fixed(""))
    """The spamd user whose preferences apply (the ``User`` header); empty: spamd's default."""
    max_size: int = 512_000
    """Messages larger than this (bytes) are not scored; the result says ``skipped``."""
    tag_threshold: Dynamic[float] = field(default=Dynamic.fixed(5.0))
    """From this score on: ``X-Spam-Flag: YES``, ``X-Spam-Status: Yes`` and the subject tag."""
    quarantine_threshold: Dynamic[float] = field(default=Dynamic.fixed(math.inf))
    """From this score on, the message is quarantined (``inf``: never)."""
    reject_threshold: Dynamic[float] = field(default=Dynamic.fixed(15.0))
    """From this score on, the message is rejected (``inf``: never)."""
    reject_text: str = "Message rejected as spam"
    """The text of the ``554 5.7.1`` reply."""
    add_headers: bool = True
    """Add ``X-Spam-Status`` and ``X-Spam-Score`` to every scored message."""
    subject_tag: str = ""
    """Put this in front of the subject of tagged messages, e.g. ``"[SPAM]"``; empty: never."""
    remove_headers: list[str] = field(default_factory=lambda: list(DEFAULT_REMOVE))
    """Headers removed from every message before ours are added, so senders cannot forge them."""

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("servers must name at least one spamd")
