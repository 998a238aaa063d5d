"""`MilterListenerSettings`: what one ``[[listener]]`` table with ``type = "milter"`` may set."""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.message import DEFAULT_SPOOL_THRESHOLD
from mailgate.milter.protocol import DEFAULT_MAX_FRAME
from mailgate.sockaddr import SocketAddress


@dataclass(slots=True)
class MilterListenerSettings:
    """Settings of one milter listener (mailgate as a milter for Postfix or sendmail)."""

    address: str = "inet:127.0.0.1:8899"
    """``inet:HOST:PORT`` or ``unix:/path``, as in Postfix's ``smtpd_milters`` (port 0: any)."""
    name: str = "milter"
    """The listener's name, as plugins see it in ``session.listener``."""
    idle_timeout: float = 600.0
    """Seconds to wait for the MTA's next command; then the connection is closed."""
    spool_threshold: int = DEFAULT_SPOOL_THRESHOLD
    """Message bodies larger than this are spooled to a temporary file, not held in memory."""
    max_frame: int = DEFAULT_MAX_FRAME
    """Largest milter frame accepted, in bytes; a larger one closes the connection."""
    socket_mode: int = 0o660
    """Permissions of a unix socket: Postfix's smtpd (user ``postfix``) must be able to connect."""
    max_headers: int = 10_000
    """Header fields kept for one message; one more closes the connection (the MTA then applies
    its ``milter_default_action``). Postfix sends each header of the message once."""
    max_header_bytes: int = 16 * 1024 * 1024
    """Bytes of header fields kept for one message; more closes the connection."""
    max_macros: int = 1000
    """Distinct macro names kept for one SMTP session (Postfix sends a few dozen); more closes
    the connection."""
    max_macro_bytes: int = 1024 * 1024
    """Bytes of macro names and values kept for one SMTP session; more closes the connection."""
    progress_interval: float = 10.0
    """While the end-of-message plugins run longer than this, send SMFIR_PROGRESS every this
    many seconds (protocol 6 only), so the MTA's content timeout does not expire; 0: never."""

    def __post_init__(self) -> None:
        SocketAddress.parse(self.address)
        if self.max_frame < 65536:
            raise ValueError("max_frame must be at least 65536 (one body chunk)")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        for name in ("max_headers", "max_header_bytes", "max_macros", "max_macro_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.progress_interval < 0:
            raise ValueError("progress_interval must be 0 (off) or positive")

    @property
    def socket_address(self) -> SocketAddress:
        """`address`, parsed."""
        return SocketAddress.parse(self.address)
