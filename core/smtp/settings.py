"""`SmtpListenerSettings`: what one ``[[listener]]`` table with ``type = "smtp"`` may set."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Literal

from mailgate.config.dynamic import Dynamic
from mailgate.config.settings import fixed_dynamics
from mailgate.message import DEFAULT_SPOOL_THRESHOLD
from mailgate.smtp.auth import MECHANISMS
from mailgate.smtp.data import DataReader
from mailgate.smtp.proxy_protocol import VERSIONS
from mailgate.sockaddr import parse_host_port

BareLineEndings = Literal["reject", "normalize"]


TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
"""What `tls_min_version` may be."""

EGRESSES = ("relay", "queue")
"""The ways out a listener can choose (``egress = ...``)."""


@dataclass(slots=True)
class SmtpListenerSettings:
    """Settings of one SMTP listener. Every field has a default; sizes are in bytes."""

    address: str = "127.0.0.1:2525"
    """Where to listen, ``HOST:PORT`` (``[::1]:2525`` for IPv6; port 0 picks a free port)."""
    name: str = "smtp"
    """The listener's name, as plugins see it in ``session.listener``."""
    hostname: str = ""
    """The name in the greeting and the EHLO reply; empty: this host's FQDN, looked up once."""
    max_message_size: Dynamic[int] = field(default=Dynamic.fixed(50 * 1024 * 1024))
    """Advertised with SIZE; larger messages get ``552 5.3.4`` (at MAIL or at the end of data).
    Rules are read at EHLO for the SIZE advertised (``client``, ``helo``, ``tls``, and ``auth``
    on an EHLO after AUTH), at MAIL for its ``SIZE=`` (``sender`` known too) and at DATA/BDAT
    for the limit enforced (the transaction's: ``rcpts`` known too)."""
    max_line_length: int = 1000
    """Longest DATA line, CRLF included (RFC 5321: 1000); longer: ``500 5.5.2``."""
    max_command_length: int = 512
    """Longest command line, CRLF included (RFC 5321: 512); longer: ``500 5.5.2``."""
    max_header_size: int = 100 * 1024
    """Largest header block; larger: ``552 5.3.4``."""
    max_recipients: Dynamic[int] = field(default=Dynamic.fixed(1000))
    """Recipients per message; more: ``452 4.5.3`` for each extra RCPT. Rules are read at each
    RCPT (``client``, ``auth``, ``sender``, ``rcpt``: the recipient being offered)."""
    max_errors: int = 20
    """Error replies per session before ``421 4.7.0`` and close (0: no limit)."""
    max_sessions: int = 500
    """Sessions open at once on this listener; one more gets ``421 4.7.0`` (0: no limit)."""
    max_sessions_per_client: int = 20
    """Sessions open at once from one client address; one more gets ``421 4.7.0`` (0: no
    limit). Keeps a few clients from holding every downstream connection."""
    max_junk_commands: int = 100
    """NOOP, RSET, VRFY, EXPN and HELP a session may send without a transaction making
    progress (an accepted MAIL, RCPT or message resets the count); more: ``421 4.7.0``
    (Postfix's ``smtpd_junk_command_limit``; 0: no limit)."""
    envelope_timeout: float = 60.0
    """Seconds from an accepted MAIL FROM (a downstream transaction is open) to the first
    accepted recipient; then ``421 4.4.2`` and close (0: no limit)."""
    transaction_timeout: float = 1800.0
    """Seconds from MAIL FROM to the end of data, whatever the client does meanwhile; then
    ``421 4.4.2`` and close (0: no limit)."""
    data_min_rate: int = 1024
    """Bytes per second DATA must average once `data_rate_grace` has passed; slower: ``421
    4.4.2`` and close (0: no limit). One byte a second no longer holds a session for days."""
    data_rate_grace: float = 30.0
    """Seconds of DATA before `data_min_rate` is checked."""
    command_timeout: float = 300.0
    """Seconds to wait for the next command; then ``421 4.4.2`` and close."""
    data_timeout: float = 300.0
    """Seconds to wait for more DATA bytes; then ``421 4.4.2`` and close."""
    egress: str = "relay"
    """Where accepted messages go: ``relay`` (the before-queue proxy to ``[relay]``; the
    client gets the downstream's own answer) or ``queue`` (store and forward: 250 once the
    message is durably in ``[store]``; see docs/queue.md)."""
    egress_timeout: float = 600.0
    """Ceiling in seconds on one downstream step (MAIL, RCPT, delivery); past it: ``451 4.4.2``."""
    bare_line_endings: BareLineEndings = "reject"
    """A bare LF or CR in DATA: ``reject`` (``554 5.6.0``) or ``normalize`` it to CRLF."""
    spool_directory: str = ""
    """Where message bodies past `spool_threshold` go, as unnamed files; "": the system's
    temporary directory (``TMPDIR``). A full disk gets ``452 4.3.1`` and loses nothing."""
    spool_threshold: int = DEFAULT_SPOOL_THRESHOLD
    """Message bodies larger than this are spooled to a temporary file, not held in memory."""
    tls_cert: str = ""
    """PEM certificate chain file; with `tls_key`, STARTTLS is offered."""
    tls_key: str = ""
    """PEM private key file for `tls_cert`."""
    tls_min_version: str = "TLSv1.2"
    """The oldest TLS version accepted: ``TLSv1.2`` or ``TLSv1.3`` (1.0 and 1.1 never)."""
    tls_ciphers: str = ""
    """OpenSSL cipher list for TLS 1.2 (``ECDHE+AESGCM:ECDHE+CHACHA20``); empty: Python's
    defaults. TLS 1.3 suites are OpenSSL's."""
    greeting: str = "ESMTP mailgate"
    """Text after the host name in the 220 greeting."""
    add_received: bool = True
    """Add a ``Received:`` trace header at the top of each message (RFC 5321 section 4.4);
    false only when the MTA behind mailgate adds one for the original client (XFORWARD)."""
    max_received: int = 100
    """A message already carrying more ``Received:`` headers is refused with ``554 5.4.6``
    (a mail loop); 0: no limit."""
    auth_mechanisms: list[str] = field(default_factory=lambda: list(MECHANISMS))
    """SMTP AUTH mechanisms offered (``PLAIN``, ``LOGIN``) when a plugin implements
    ``authenticate``; empty: AUTH is never offered."""
    auth_require_tls: bool = True
    """Offer and accept AUTH only after STARTTLS; before it: ``538 5.7.11``."""
    auth_failure_delay: float = 1.0
    """Seconds to wait before answering a failed AUTH with ``535 5.7.8`` (slows guessing)."""
    proxy_protocol: str = "off"
    """Read a PROXY protocol header (HAProxy's) before the greeting: ``off``, ``v1``, ``v2``
    or ``any`` (either version). The client address and port it carries become the
    session's. On, a connection from outside `proxy_sources` is closed, as is one whose
    header is missing, malformed or of another version."""
    proxy_sources: list[str] = field(default_factory=list)
    """The proxies allowed to send a PROXY header: addresses or networks (``10.0.0.0/8``);
    required when `proxy_protocol` is on."""
    proxy_timeout: float = 5.0
    """Seconds the proxy has to send its whole header after connecting; then the connection
    is closed."""
    proxy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, default=(), repr=False
    )
    """`proxy_sources` parsed."""

    def __post_init__(self) -> None:
        fixed_dynamics(self)
        if self.egress not in EGRESSES:
            raise ValueError(f"egress must be one of {', '.join(EGRESSES)}, not {self.egress!r}")
        if self.bare_line_endings not in ("reject", "normalize"):
            raise ValueError(
                f"bare_line_endings must be 'reject' or 'normalize', not {self.bare_line_endings!r}"
            )
        if self.tls_ciphers:
            try:
                ssl.create_default_context().set_ciphers(self.tls_ciphers)
            except ssl.SSLError:
                raise ValueError(
                    f"tls_ciphers: OpenSSL selects no cipher from {self.tls_ciphers!r}"
                ) from None
        if self.tls_min_version not in TLS_VERSIONS:
            raise ValueError(f"tls_min_version must be one of {', '.join(TLS_VERSIONS)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        self.auth_mechanisms = [m.upper() for m in self.auth_mechanisms]
        unknown = set(self.auth_mechanisms) - set(MECHANISMS)
        if unknown:
            raise ValueError(f"auth_mechanisms may hold only {', '.join(MECHANISMS)}")
        if self.auth_failure_delay < 0:
            raise ValueError("auth_failure_delay must be 0 or more")
        self._check_proxy_settings()
        if self.max_received < 0:
            raise ValueError("max_received must be 0 or more")
        for name in (
            "max_sessions",
            "max_sessions_per_client",
            "max_junk_commands",
            "envelope_timeout",
            "transaction_timeout",
            "data_min_rate",
            "data_rate_grace",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more")
        for name in ("max_line_length", "max_command_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if any(size <= 0 for size in self.max_message_size.values()):
            raise ValueError("max_message_size must be positive")
        if any(count < 0 for count in self.max_recipients.values()):
            raise ValueError("max_recipients must be 0 or more")

    def _check_proxy_settings(self) -> None:
        if self.proxy_protocol not in VERSIONS:
            raise ValueError(
                f"proxy_protocol must be one of {', '.join(VERSIONS)}, not {self.proxy_protocol!r}"
            )
        networks = []
        for source in self.proxy_sources:
            try:
                networks.append(ipaddress.ip_network(source, strict=False))
            except ValueError:
                raise ValueError(
                    f"proxy_sources: {source!r} is not an address or network"
                ) from None
        self.proxy_networks = tuple(networks)
        if self.proxy_protocol != "off" and not networks:
            raise ValueError(
                "proxy_protocol is on but proxy_sources is empty: list the proxies' addresses"
            )
        if self.proxy_timeout <= 0:
            raise ValueError("proxy_timeout must be positive")

    @property
    def proxy_versions(self) -> frozenset[int]:
        """The PROXY header versions accepted (empty: the protocol is off)."""
        return VERSIONS[self.proxy_protocol]

    def trusted_proxy(self, address: str) -> bool:
        """True if a connection from `address` may send a PROXY header."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.proxy_networks)

    def new_data_reader(self, *, dot_stuffed: bool = True, max_size: int = 0) -> DataReader:
        """A reader for one message's DATA (`dot_stuffed`) or BDAT chunks (raw bytes), under
        this listener's limits; `max_size` is the transaction's `max_message_size` (0: the
        setting's ``else`` value)."""
        return DataReader(
            dot_stuffed=dot_stuffed,
            max_line_length=self.max_line_length,
            max_header_size=self.max_header_size,
            max_size=max_size or self.max_message_size.default,
            normalize_bare_line_endings=self.bare_line_endings == "normalize",
            spool_threshold=self.spool_threshold,
            spool_directory=self.spool_directory or None,
        )

    @property
    def host_port(self) -> tuple[str, int]:
        """`address` split into host and port."""
        return parse_host_port(self.address, key="address")
