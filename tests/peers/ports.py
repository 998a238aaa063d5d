"""Loopback port allocation for test daemons."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free now and was not returned before in this process.

    The kernel picks the port (bind to port 0), so parallel test runs do not collide on a fixed
    number; remembering what was handed out stops two daemons of one run getting the same one
    before either has bound it.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out and _udp_free(host, port):
            _handed_out.add(port)
            return port


def _udp_free(host: str, port: int) -> bool:
    # Some peers (the test DNS) listen on UDP and TCP with one number.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
