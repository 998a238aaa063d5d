"""`RelaySettings`: how mailgate reaches the downstream MTA (the ``[relay]`` table)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.config.dynamic import Dynamic
from mailgate.config.settings import HostPort, fixed_dynamics
from mailgate.sockaddr import parse_host_port

STARTTLS_MODES = ("opportunistic", "require", "never")


@dataclass(slots=True)
class RelaySettings:
    """The ``[relay]`` table of ``mailgate.toml``: the downstream and how mailgate talks to it."""

    address: Dynamic[HostPort] = field(default=Dynamic.fixed("127.0.0.1:25"))
    """Downstream MTA as ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6). Per transaction: rules
    read at MAIL FROM, when the downstream transaction opens (``client``, ``helo``, ``auth``,
    ``listener``, ``sender``; no ``rcpt`` yet). Each address has its own connection pool.
    The queue's default route and ``mailgate quarantine release`` use the ``else`` value."""

    helo_name: str = ""
    """Name sent in EHLO; empty means this host's name."""

    pool_size: int = 16
    """Idle downstream connections kept for reuse; 0 opens one connection per message."""

    idle_timeout: float = 30.0
    """Seconds an unused pooled connection stays open before it is closed with QUIT."""

    max_transactions: int = 80
    """Downstream transactions (MAIL FROM sent, message not yet handed over) open at once;
    one more MAIL FROM gets ``451 4.3.2`` (0: no limit). Keep it below what the downstream
    serves at once (Postfix: ``default_process_limit`` 100), so clients that open
    transactions and stall cannot take every downstream process."""

    max_messages_per_connection: int = 1000
    """A connection is closed after this many transactions (0: no limit)."""

    connect_timeout: float = 10.0
    """Seconds for the TCP connect plus the greeting, EHLO and STARTTLS."""

    command_timeout: float = 60.0
    """Seconds to wait for the reply to MAIL, RCPT, RSET and BDAT chunks."""

    data_timeout: float = 300.0
    """Seconds for sending each chunk of the message and for the end-of-data reply."""

    use_bdat: bool = True
    """Send with BDAT (CHUNKING) when the downstream offers it, else DATA."""

    chunk_size: int = 128 * 1024
    """Bytes per BDAT chunk, and per write with DATA."""

    starttls: str = "opportunistic"
    """``opportunistic`` (when offered), ``require`` (refuse to relay without it) or ``never``."""

    tls_verify: bool = False
    """Verify the downstream's certificate and name (off: the downstream is usually local)."""

    tls_ca_file: str = ""
    """CA bundle used when `tls_verify` is on; empty uses the system store."""

    xforward: bool = True
    """Send the original client (name, address, port, protocol, HELO, transaction id) with
    XFORWARD before each MAIL FROM when the downstream offers it (Postfix does to the hosts in
    ``smtpd_authorized_xforward_hosts``)."""

    xclient: bool = True
    """Present the original client (name, address, port, HELO, login) with XCLIENT when the
    downstream offers it (Postfix does to the hosts in ``smtpd_authorized_xclient_hosts``), so
    that the downstream applies its own restrictions to the real client. A downstream connection
    then serves one client session (XCLIENT cannot be undone); XFORWARD, when also offered,
    still carries the transaction id."""

    quarantine_dir: str = "/var/lib/mailgate/quarantine"
    """Where quarantined messages are kept (one ``.eml`` plus a ``.json`` sidecar each)."""

    def __post_init__(self) -> None:
        fixed_dynamics(self)
        if self.starttls not in STARTTLS_MODES:
            raise ValueError(f"starttls: expected one of {', '.join(STARTTLS_MODES)}")
        if self.pool_size < 0 or self.max_messages_per_connection < 0:
            raise ValueError("pool_size and max_messages_per_connection must be >= 0")
        if self.max_transactions < 0:
            raise ValueError("max_transactions must be >= 0")
        if self.chunk_size < 1024:
            raise ValueError("chunk_size: expected at least 1024 bytes")
        for address in self.address.values():
            if parse_host_port(address, key="address")[1] == 0:
                raise ValueError("address: a port from 1 to 65535 (port 0 is for listeners)")

    @property
    def host(self) -> str:
        """The downstream host part of `address` (its ``else`` value)."""
        return parse_host_port(self.address.default, key="address")[0]

    @property
    def port(self) -> int:
        """The downstream port part of `address` (its ``else`` value)."""
        return parse_host_port(self.address.default, key="address")[1]
