"""A minimal raw milter client: option negotiation (OPTNEG), used as a readiness probe.

Deliberately independent of ``mailgate.milter``, so a bug there cannot hide behind a probe that
shares it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

SMFI_VERSION = 6
ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF


@dataclass(frozen=True, slots=True)
class OptNeg:
    """A milter's answer to OPTNEG: its version and the actions and protocol steps it wants."""

    version: int
    actions: int
    protocol: int


def connect(spec: str, timeout: float = 2.0) -> socket.socket:
    """Connect to a milter given as Postfix spells it: ``inet:HOST:PORT`` or ``unix:PATH``."""
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(rest)
        except OSError:
            sock.close()
            raise
        return sock
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        return socket.create_connection((host, int(port)), timeout=timeout)
    raise ValueError(f"milter address must start with inet: or unix:, got {spec!r}")


def packet(command: bytes, payload: bytes = b"") -> bytes:
    """One milter packet: 4-byte length (command plus payload), the command byte, the payload."""
    return struct.pack("!I", len(command) + len(payload)) + command + payload


def read_packet(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one packet; returns (command byte, payload)."""
    length = struct.unpack("!I", _recv_exact(sock, 4))[0]
    body = _recv_exact(sock, length)
    return body[:1], body[1:]


def optneg(
    spec: str,
    timeout: float = 2.0,
    actions: int = ALL_ACTIONS,
    protocol: int = ALL_PROTOCOL,
) -> OptNeg:
    """Negotiate options with the milter at ``spec`` (as Postfix 3.7 does), then QUIT."""
    with connect(spec, timeout) as sock:
        sock.sendall(packet(b"O", struct.pack("!III", SMFI_VERSION, actions, protocol)))
        command, payload = read_packet(sock)
        if command != b"O" or len(payload) < 12:
            raise ConnectionError(f"milter {spec} answered OPTNEG with {command!r}")
        version, got_actions, got_protocol = struct.unpack("!III", payload[:12])
        sock.sendall(packet(b"Q"))
        return OptNeg(version, got_actions, got_protocol)


def optneg_probe(spec: str) -> bool:
    """True once the milter at ``spec`` completes OPTNEG (a readiness probe for start_daemon)."""
    try:
        optneg(spec, timeout=1.0)
    except (OSError, ConnectionError, struct.error):
        return False
    return True


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("milter closed the connection")
        data += chunk
    return data
