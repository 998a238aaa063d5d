"""The listening sockets a master binds once and hands to its workers.

Two ways to share a TCP listener, chosen with ``[mailgate] worker_sockets``:

- ``reuseport``: one socket per worker, each bound to the same address with ``SO_REUSEPORT``;
  the kernel spreads new connections over them by a hash of the client's address and port.
- ``shared``: one socket, inherited by every worker; whichever worker's loop accepts first
  takes the connection.

A unix socket (milter, policy) is always shared. The master keeps every socket open, so a
worker that dies and is restarted gets the same socket back and what waited in its backlog is
served, not refused.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Literal

from mailgate.config import ConfigError
from mailgate.loader import Config, ListenerConfig
from mailgate.sockaddr import SocketAddress

BACKLOG = 512
"""As the single-process SMTP listener's: a burst of connections waits rather than fails."""

SocketSharing = Literal["reuseport", "shared"]


@dataclass(slots=True)
class ListenerSockets:
    """The sockets of one listener: one for every worker (``shared``, unix) or one each."""

    sockets: list[socket.socket]
    path: str = ""
    """A unix socket's path, removed when the master stops."""
    port: int = 0

    def for_worker(self, number: int) -> socket.socket:
        """The socket worker `number` (1 to N) serves."""
        return self.sockets[(number - 1) % len(self.sockets)]


@dataclass(slots=True)
class NodeSockets:
    """Every listener's sockets, by listener index, as the master bound them."""

    listeners: dict[int, ListenerSockets] = field(default_factory=dict)

    def for_worker(self, number: int) -> dict[int, socket.socket]:
        """The socket of each listener that worker `number` serves."""
        return {index: ls.for_worker(number) for index, ls in self.listeners.items()}

    @property
    def ports(self) -> list[int]:
        """The bound TCP port of each listener (0 for a unix socket), in configuration order."""
        return [self.listeners[i].port for i in sorted(self.listeners)]

    def close(self) -> None:
        """Close every socket and remove the unix sockets' paths."""
        for ls in self.listeners.values():
            for sock in ls.sockets:
                sock.close()
            if ls.path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(ls.path)
        self.listeners.clear()


def bind_all(config: Config, workers: int, sharing: SocketSharing) -> NodeSockets:
    """Bind every listener of `config` for `workers` workers.

    Raises `ConfigError` naming the listener's file and ``address`` key when an address cannot
    be bound; what was bound already is closed again.
    """
    node = NodeSockets()
    try:
        for index, lc in enumerate(config.listeners):
            node.listeners[index] = _bind_listener(lc, workers, sharing)
    except BaseException:
        node.close()
        raise
    return node


def _address(lc: ListenerConfig) -> SocketAddress:
    if lc.type == "smtp":
        host, port = lc.settings.host_port
        return SocketAddress(host=host, port=port)
    address: SocketAddress = lc.settings.socket_address
    return address


def _bind_listener(lc: ListenerConfig, workers: int, sharing: SocketSharing) -> ListenerSockets:
    address = _address(lc)
    try:
        if address.is_unix:
            unix = _bind_unix(address.path, lc.settings.socket_mode)
            return ListenerSockets([unix], address.path)
        count = workers if sharing == "reuseport" else 1
        first = _bind_tcp(address.host, address.port, reuse_port=sharing == "reuseport")
        port = int(first.getsockname()[1])
        sockets = [first]
        try:
            for _ in range(count - 1):
                sockets.append(_bind_tcp(address.host, port, reuse_port=True))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return ListenerSockets(sockets, port=port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(
            lc.source,
            lc.setting("address"),
            lc.settings.address,
            "an address this host can listen on",
            reason,
        ) from None


def _bind_tcp(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, mode: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock
