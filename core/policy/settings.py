"""`PolicyListenerSettings`: what one ``[[listener]]`` table with ``type = "policy"`` may set."""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.sockaddr import SocketAddress

DEFAULT_MAX_REQUEST = 65536
"""A Postfix 3.7 request is about 1 KiB; long addresses and TLS subjects stay well below this."""


@dataclass(slots=True)
class PolicyListenerSettings:
    """Settings of one policy listener (mailgate as Postfix's ``check_policy_service``)."""

    address: str = "inet:127.0.0.1:10040"
    """``inet:HOST:PORT``, ``HOST:PORT`` or ``unix:/path`` (port 0: any free port)."""
    name: str = "policy"
    """The listener's name, as plugins see it in ``session.listener``."""
    idle_timeout: float = 600.0
    """Seconds to wait for Postfix's next request; then the connection is closed. Longer than
    Postfix's ``smtpd_policy_service_max_idle`` (300 s), so Postfix is the one that hangs up."""
    socket_mode: int = 0o660
    """Permissions of a unix socket: Postfix's smtpd (user ``postfix``) must be able to connect."""
    max_request: int = DEFAULT_MAX_REQUEST
    """Largest request accepted, in bytes; a larger (or malformed) one closes the connection."""
    max_attributes: int = 1000
    """Distinct attribute names kept for one SMTP session (Postfix sends about 40); more closes
    the connection."""

    def __post_init__(self) -> None:
        if self.max_attributes <= 0:
            raise ValueError("max_attributes must be positive")
        try:
            SocketAddress.parse(self.address)
        except ValueError as exc:
            raise ValueError(f"address: {exc}") from None
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.max_request < 1024:
            raise ValueError("max_request must be at least 1024 bytes")

    @property
    def socket_address(self) -> SocketAddress:
        """`address`, parsed."""
        return SocketAddress.parse(self.address)
