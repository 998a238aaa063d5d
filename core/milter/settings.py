"""`MilterListenerSettings`: what one ``[[listener]]`` table with ``type = "milter"`` may set."""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.message import DEFAULT_SPOOL_THRESHOLD
from mailgate.milter.protocol import DEFAULT_MAX_FRAME


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """Where a milter listens: a TCP host and port, or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        """True for a unix socket."""
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_address(spec: str) -> SocketAddress:
    """Read a milter socket address in any of the forms administrators know.

    ``inet:HOST:PORT`` and ``unix:/path`` (Postfix's ``smtpd_milters`` syntax), ``inet:PORT@HOST``
    and ``local:/path`` (sendmail's), ``inet6:[::1]:PORT``, and a bare ``HOST:PORT``.
    """
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("unix", "local"):
        if not rest.startswith("/"):
            raise ValueError(f"unix socket path must be absolute: {spec!r}")
        return SocketAddress(path=rest)
    if not sep or kind not in ("inet", "inet6"):
        rest = spec
    if "@" in rest:
        port, _, host = rest.partition("@")
    else:
        host, _, port = rest.rpartition(":")
    if not port.isdigit() or not host or int(port) > 65535:
        raise ValueError(f"milter address must be inet:HOST:PORT or unix:/path, not {spec!r}")
    return SocketAddress(host=host.strip("[]"), port=int(port))


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

    def __post_init__(self) -> None:
        parse_address(self.address)
        if self.max_frame < 65536:
            raise ValueError("max_frame must be at least 65536 (one body chunk)")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")

    @property
    def socket_address(self) -> SocketAddress:
        """`address`, parsed."""
        return parse_address(self.address)
