"""`QueueSettings`: how the queue delivers (the ``[queue]`` table)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.queue.routes import DEFAULT_DESTINATION_CONCURRENCY, RouteSettings
from mailgate.sockaddr import is_host_port, parse_host_port


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

    min_backoff: float = 300.0
    """Seconds before the first retry of a deferred recipient; doubled at each attempt."""

    max_backoff: float = 4000.0
    """The longest wait between two attempts."""

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
        if not 0 < self.min_backoff <= self.max_backoff:
            raise ValueError("min_backoff: expected more than 0 and at most max_backoff")
        if self.destination_concurrency < 1:
            raise ValueError("destination_concurrency: at least 1")
        names: set[str] = set()
        for i, route in enumerate(self.route):
            route.name = route.name or f"route[{i}]"
            if route.name in names or route.name == "default":
                raise ValueError(f"route: the name {route.name!r} is given twice (or is 'default')")
            names.add(route.name)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1, 2, ...)."""
        return float(min(self.max_backoff, self.min_backoff * 2 ** min(max(attempts - 1, 0), 32)))
