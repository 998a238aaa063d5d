"""`ConsoleSettings`: the ``[console]`` table."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.sockaddr import is_host_port


@dataclass(slots=True)
class ConsoleSettings:
    """The web console. Off until `address` is set."""

    address: str = ""
    """``host:port`` to serve on, e.g. ``"127.0.0.1:8025"``; "" for no console."""

    tls_cert: str = ""
    """PEM certificate (chain) for HTTPS; with `tls_key`. Without them the console speaks
    plain HTTP: keep it on loopback or behind a TLS-terminating proxy."""

    tls_key: str = ""

    logins: list[str] = field(default_factory=list)
    """Logins that may sign in (checked by the ``authenticate`` plugins, as SMTP AUTH is);
    empty: any login those plugins accept."""

    session_lifetime: float = 8 * 3600.0
    """Seconds a sign-in lasts."""

    sign_in_attempts: int = 5
    """Failed sign-ins allowed per client address in `sign_in_window` seconds; then 429."""

    sign_in_window: float = 900.0

    secure_cookies: bool | None = None
    """Mark the session cookie ``Secure``; unset: when the console serves HTTPS."""

    def __post_init__(self) -> None:
        if self.address and not is_host_port(self.address):
            raise ValueError('address: expected "host:port", or "" for no console')
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert: give tls_cert and tls_key together")
        if self.session_lifetime <= 0 or self.sign_in_window <= 0 or self.sign_in_attempts < 1:
            raise ValueError(
                "session_lifetime: session_lifetime, sign_in_window and sign_in_attempts "
                "must be positive"
            )
