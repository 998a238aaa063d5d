"""`QueueSettings`: how the queue delivers (the ``[queue]`` table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mailgate.config.dynamic import Dynamic
from mailgate.queue.routes import DEFAULT_DESTINATION_CONCURRENCY, RouteSettings
from mailgate.sockaddr import is_host_port, parse_host_port

DsnReturn = Literal["full", "headers"]


@dataclass(slots=True)
class QueueSettings:
    """The ``[queue]`` table of ``mailgate.toml``. The store itself is ``[store]``; how the
    next hop is spoken to (timeouts, BDAT, STARTTLS, pool) is taken from ``[relay]``."""

    next_hop: str = ""
    """Where queued mail goes, ``HOST:PORT``; empty: ``[relay] address``."""

    node_id: str = ""
    """This node's name on its leases; empty: the host name. Nodes sharing a store need
    different ones; at start a node takes back the leases its previous run left."""

    concurrency: int = 20
    """Messages delivered at once by this node."""

    lease_time: float = 300.0
    """Seconds a claimed message stays this node's; a delivery attempt is cut off at half of
    it. When a node dies, its messages are taken over by others after this time."""

    poll_interval: float = 1.0
    """Seconds between looks for due messages when nothing woke the worker (messages
    accepted by other nodes, retries coming due)."""

    min_backoff: Dynamic[float] = field(default=Dynamic.fixed(300.0))
    """Seconds before the first retry of a deferred recipient; doubled at each attempt. May
    be rules on the message's sender and recipient (``rcpt``), as ``max_age`` below."""

    max_backoff: Dynamic[float] = field(default=Dynamic.fixed(4000.0))
    """The longest wait between two attempts."""

    max_age: Dynamic[float] = field(default=Dynamic.fixed(432000.0))
    """Seconds after acceptance when a recipient still deferred is bounced (status 4.4.7,
    "delivery time expired", with the last reply as diagnostic). Postfix's 5 days. Rules
    see ``sender``, ``rcpt`` (the recipient), ``rcpts`` and ``size`` of the queued message."""

    delay_warning: Dynamic[float] = field(default=Dynamic.fixed(0.0))
    """Seconds after acceptance when the sender of a recipient still deferred is told once
    (a "delayed" DSN); 0: never (the default; Postfix's ``delay_warning_time``)."""

    hostname: str = ""
    """The name in DSNs: ``Reporting-MTA`` and ``From: MAILER-DAEMON@...``; empty: the
    host's fully qualified name."""

    dsn_return: DsnReturn = "full"
    """What a failure DSN returns when the sender did not say (no ``RET=``): the whole
    message, or only its headers. Delay and success DSNs return the headers only."""

    dsn_max_return: int = 100_000
    """Bytes of the original message a DSN returns at most: a larger message is returned
    as its headers only (``text/rfc822-headers``), and the report says so."""

    shutdown_timeout: float = 30.0
    """At shutdown, seconds to let deliveries in flight finish; then they are stopped and
    their leases released (those messages are tried again: at least once, never zero)."""

    max_batch: int = 128
    """Most writes (accepted messages, delivery results) sharing one commit."""

    destination_concurrency: int = DEFAULT_DESTINATION_CONCURRENCY
    """Connections at once to one destination (a next hop, or a recipient domain of an MX
    route), for the default route and every route that does not set its own."""

    route: list[RouteSettings] = field(default_factory=list)
    """The ``[[queue.route]]`` tables, in order: the first whose ``when`` is true for a
    recipient is its route; none: `next_hop` (see `mailgate.queue.routes`)."""

    def __post_init__(self) -> None:
        if self.next_hop and not is_host_port(self.next_hop):
            raise ValueError('next_hop: expected "host:port", or "" for [relay] address')
        if self.next_hop and parse_host_port(self.next_hop, key="next_hop")[1] == 0:
            raise ValueError("next_hop: a port from 1 to 65535")
        if self.concurrency < 1 or self.max_batch < 1:
            raise ValueError("concurrency and max_batch must be at least 1")
        if self.lease_time <= 0 or self.poll_interval <= 0 or self.shutdown_timeout < 0:
            raise ValueError("lease_time and poll_interval must be positive")
        if not 0 < self.min_backoff.default <= self.max_backoff.default:
            raise ValueError("min_backoff: expected more than 0 and at most max_backoff")
        if self.destination_concurrency < 1:
            raise ValueError("destination_concurrency: at least 1")
        names: set[str] = set()
        for i, route in enumerate(self.route):
            route.name = route.name or f"route[{i}]"
            if route.name in names or route.name == "default":
                raise ValueError(f"route: the name {route.name!r} is given twice (or is 'default')")
            names.add(route.name)
        for name in ("min_backoff", "max_backoff", "max_age"):
            if any(v <= 0 for v in _values(getattr(self, name))):
                raise ValueError(f"{name}: expected seconds, more than 0")
        if any(v < 0 for v in _values(self.delay_warning)):
            raise ValueError("delay_warning: expected seconds, 0 (off) or more")
        if self.dsn_max_return < 0:
            raise ValueError("dsn_max_return: expected bytes, 0 or more")


def _values(setting: Dynamic[float]) -> list[float]:
    return [setting.default, *(value for _, value in setting.rules)]
