"""The settings of the `milter` plugin: the keys of ``conf.d/NN-milter.toml`` (one milter each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from mailgate.config import Check
from mailgate.milter.protocol import DEFAULT_MAX_FRAME
from mailgate.sockaddr import is_socket_address

Stage = Literal["connect", "helo", "mail", "rcpt", "data", "message"]
"""One SMTP stage a milter can be called at."""

STAGES: tuple[Stage, ...] = ("connect", "helo", "mail", "rcpt", "data", "message")
"""The SMTP stages at which the milter can be called, in order."""

FAILURE_POLICIES = ("tempfail", "reject", "accept", "skip")
"""What a failed milter turns into; see `MilterSettings.on_failure`."""


MilterAddress = Annotated[
    str, Check(is_socket_address, '"inet:HOST:PORT", "inet:PORT@HOST" or "unix:/path"')
]
"""A milter's socket, spelled as in Postfix's ``smtpd_milters``."""


@dataclass(slots=True)
class MilterSettings:
    """One external milter: where it listens, when to call it, how long to wait, how it fails."""

    address: MilterAddress = "inet:127.0.0.1:8891"
    """The milter's socket: ``inet:HOST:PORT`` (sendmail's ``inet:PORT@HOST``), ``unix:/path``."""
    name: str = ""
    """The milter's name in logs and in ``transaction.results`` (default: the address)."""
    version: Literal[2, 6] = 6
    """The protocol version offered: 6 (everything) or 2 (for very old milters)."""
    stages: list[Stage] = field(default_factory=lambda: list(STAGES))
    """Stages at which the milter is called and its answer used; steps of stages left out are
    sent together at the next listed stage (fewer round trips, later decisions)."""
    connect_timeout: float = 5.0
    """Seconds to open the connection and negotiate (Postfix: milter_connect_timeout is 30)."""
    command_timeout: float = 10.0
    """Seconds to wait for the reply to each command (Postfix: milter_command_timeout)."""
    eom_timeout: float = 20.0
    """Seconds to wait for the end-of-message reply; each PROGRESS starts it again. Keep the
    plugin's own ``timeout`` (default 30 s) larger."""
    on_failure: Literal["tempfail", "reject", "accept", "skip"] = "tempfail"
    """A failed milter (unreachable, hung, dying, malformed or unexpected replies):
    ``tempfail`` (451 4.7.1), ``reject`` (554 5.7.1), ``accept`` (go on without this milter for
    the rest of the session) or ``skip`` (go on without it for this message only)."""
    hostname: str = ""
    """The value of the ``j`` macro (mailgate's host name); default: this machine's name."""
    max_frame: int = DEFAULT_MAX_FRAME
    """Largest reply frame accepted from the milter, in bytes."""

    def __post_init__(self) -> None:
        if self.on_failure not in FAILURE_POLICIES:
            raise ValueError(f"on_failure must be one of {FAILURE_POLICIES}")
        for stage in self.stages:
            if stage not in STAGES:
                raise ValueError(f"stages: unknown stage {stage!r}, expected one of {STAGES}")
        if self.version not in (2, 6):
            raise ValueError("version must be 2 or 6")
        for name in ("connect_timeout", "command_timeout", "eom_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
