"""The settings of the `clamav` plugin: the keys of ``conf.d/NN-clamav.toml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from mailgate.config import Check, Dynamic, fixed_dynamics
from mailgate.sockaddr import is_socket_address

OVER_SIZE_POLICIES = ("skip", "tempfail", "reject")
VIRUS_ACTIONS = ("reject", "quarantine", "tag")

OverSize = Literal["skip", "tempfail", "reject"]
VirusAction = Literal["reject", "quarantine", "tag"]

ClamdServer = Annotated[str, Check(is_socket_address, '"host:port" or "unix:/path"')]
"""One clamd address in the ``servers`` list."""


@dataclass(slots=True)
class ClamavSettings:
    """How to reach clamd and what to do with what it finds."""

    servers: list[ClamdServer] = field(default_factory=lambda: ["127.0.0.1:3310"])
    """clamd addresses, tried in order: ``"host:port"`` or ``"unix:/path/clamd.ctl"``."""
    connect_timeout: float = 2.0
    """Seconds to wait for each connection before trying the next server."""
    scan_timeout: float = 20.0
    """Seconds from the first byte sent to clamd's answer, per server (keep under `timeout`)."""
    chunk_size: int = 1 << 16
    """INSTREAM chunk size in bytes."""
    max_size: Dynamic[int] = field(default=Dynamic.fixed(25 * 1024 * 1024))
    """Largest message sent to clamd, in bytes: set it to clamd's StreamMaxLength (or lower).
    Per transaction (rules ``{ if = "...", then = 10485760 }``), read at the end of data."""
    over_size: Dynamic[OverSize] = field(default=Dynamic.fixed("skip"))
    """A larger message: ``skip`` (pass it, recorded as skipped), ``tempfail`` or ``reject``.
    Per transaction, read at the end of data."""
    action: Dynamic[VirusAction] = field(default=Dynamic.fixed("reject"))
    """On a virus: ``reject`` (554 5.7.1 with the name), ``quarantine`` or ``tag`` (header).
    Per transaction, read at the end of data (``rcpts``, ``sender``, ``client`` all known)."""
    reject_text: str = "Virus found: {virus}"
    """The reject reply text; ``{virus}`` is the signature name."""
    header: str = "X-Virus-Status"
    """Header for ``tag`` and ``quarantine`` (``Infected (NAME)``); existing ones are removed."""
    tag_clean: bool = False
    """Also add the header (``Clean``) to messages clamd found clean."""

    def __post_init__(self) -> None:
        fixed_dynamics(self)
        for policy in self.over_size.values():
            if policy not in OVER_SIZE_POLICIES:
                raise ValueError(f"over_size must be one of {OVER_SIZE_POLICIES}, not {policy!r}")
        for action in self.action.values():
            if action not in VIRUS_ACTIONS:
                raise ValueError(f"action must be one of {VIRUS_ACTIONS}, not {action!r}")
        for size in self.max_size.values():
            if size <= 0:
                raise ValueError(f"max_size must be a positive number of bytes, not {size!r}")
        if not self.servers:
            raise ValueError("servers must name at least one clamd")
