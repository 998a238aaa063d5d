"""`SocketAddress`: a daemon's socket as an administrator writes it (clamd, spamd, a milter).

One parser for every setting that names a TCP host and port or a unix socket, so that each
accepts the spellings administrators bring from Postfix, sendmail and the daemons' own configs;
`parse_host_port` is its TCP part, for the settings that take only ``HOST:PORT``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any

FORMS = (
    "HOST:PORT, [IPV6]:PORT, inet:HOST:PORT, inet:PORT@HOST, inet6:[IPV6]:PORT, "
    "unix:/path, local:/path or /path"
)
"""The spellings `SocketAddress.parse` accepts, for error messages."""

HOST_PORT = "HOST:PORT or [IPV6]:PORT"
"""The spellings `parse_host_port` accepts, for error messages."""

_INET = ("inet", "inet6")
_UNIX = ("unix", "local")
_NOT_IN_HOST = frozenset("[]/@") | frozenset(" \t\r\n\v\f\0")


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """A TCP host and port, or the absolute path of a unix socket (then `host` is empty)."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, spec: str) -> SocketAddress:
        """Read any spelling in `FORMS`: a bare or bracketed IPv6 host, port 0 to 65535.

        ``inet:HOST:PORT`` and ``unix:/path`` are Postfix's ``smtpd_milters`` syntax,
        ``inet:PORT@HOST`` and ``local:/path`` sendmail's; raises ValueError for anything else.
        """
        kind, sep, rest = spec.partition(":")
        if sep and kind in _UNIX:
            return cls(path=_absolute_path(rest, spec))
        if spec.startswith("/"):
            return cls(path=_absolute_path(spec, spec))
        if not sep or kind not in _INET:
            rest = spec
        if "@" in rest:
            port, _, host = rest.partition("@")
            tcp = _host_and_port(host, port)
        else:
            tcp = _split_host_port(rest)
        if tcp is None:
            raise ValueError(f"socket address must be {FORMS}, not {spec!r}")
        return cls(host=tcp[0], port=tcp[1])

    @property
    def is_unix(self) -> bool:
        """True for a unix socket."""
        return bool(self.path)

    @property
    def milter_spec(self) -> str:
        """Postfix's ``smtpd_milters`` spelling: ``inet:HOST:PORT`` or ``unix:/path``."""
        return str(self) if self.path else f"inet:{self}"

    def __str__(self) -> str:
        """``HOST:PORT`` (``[IPV6]:PORT``) or ``unix:/path``; `parse` reads it back."""
        if self.path:
            return f"unix:{self.path}"
        # Brackets keep an IPv6 literal, or a host named like a prefix, apart from the prefixes.
        bracket = ":" in self.host or self.host in _INET + _UNIX
        return f"[{self.host}]:{self.port}" if bracket else f"{self.host}:{self.port}"

    async def open_connection(
        self, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect: `asyncio.open_connection` or `asyncio.open_unix_connection` with `kwargs`."""
        if self.path:
            return await asyncio.open_unix_connection(self.path, **kwargs)
        return await asyncio.open_connection(self.host, self.port, **kwargs)


def parse_host_port(text: str, *, key: str = "address") -> tuple[str, int]:
    """``"mx.example:25"`` -> ``("mx.example", 25)``; ``"[::1]:25"`` -> ``("::1", 25)``.

    The one reading of a TCP ``HOST:PORT`` (listeners, the relay, metrics, and the TCP forms of
    `SocketAddress.parse`): a host name or IP address, an IPv6 address in brackets or bare (the
    last colon starts the port), a port from 0 to 65535. Raises ValueError with a message that
    starts with `key`, so that a settings error names the key.
    """
    parsed = _split_host_port(text)
    if parsed is None:
        raise ValueError(f"{key} must be {HOST_PORT}, not {text!r}")
    return parsed


def is_host_port(text: str) -> bool:
    """True when `parse_host_port` accepts `text` (for a settings `Check`)."""
    return _split_host_port(text) is not None


def is_socket_address(value: str) -> bool:
    """True when `SocketAddress.parse` accepts `value` (for a settings `Check`)."""
    try:
        SocketAddress.parse(value)
    except ValueError:
        return False
    return True


def _absolute_path(path: str, spec: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"unix socket path must be absolute (unix:/path or /path): {spec!r}")
    return path


def _split_host_port(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    return _host_and_port(host, port)


def _host_and_port(host: str, port: str) -> tuple[str, int] | None:
    host = _host(host)
    if not host or not _is_port(port):
        return None
    return host, int(port)


def _host(text: str) -> str:
    """`text` without the brackets of an IPv6 literal (or of a name, as Postfix writes
    ``[mx.example]``); empty when it is no host name. A host with a colon is an IPv6 address."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if _NOT_IN_HOST.intersection(text) or (":" in text and not _is_ipv6(text)):
        return ""
    return text


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535
