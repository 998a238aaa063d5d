"""The ``limits`` plugin's settings: where counters live, and the ``[[limit]]`` rules."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from mailgate.config import Dynamic
from mailgate.expressions import Expression, ExpressionError
from mailgate.session import Session

What = Literal["connections", "concurrent", "messages", "recipients", "bytes"]
"""What a rule counts: connections opened per window, connections open at once, messages
(MAIL FROM) per window, recipients (RCPT TO) per window or per message, bytes per window or
the size of one message."""

PER_MESSAGE = ("recipients", "bytes")
"""The kinds a rule with ``window = 0`` counts per message instead of per window."""


@dataclass(slots=True)
class LimitRule:
    """One ``[[limit]]`` table: count `what` per value of `key`, refuse past `max`."""

    what: What
    """``connections``, ``concurrent``, ``messages``, ``recipients`` or ``bytes``."""
    max: Dynamic[int]
    """The most allowed per key and window; may depend on the session
    (``[{ if = "authenticated", then = 500 }, { else = 50 }]``)."""
    key: str = "client.ip"
    """A CEL expression giving the counter's key (``client.ip``, ``sender.address``,
    ``auth.login``, ``sender.domain``). A key that comes out empty does not count: with
    ``auth.login`` only authenticated sessions are counted."""
    when: Expression | None = None
    """Count only when this CEL expression is true."""
    window: float = 60.0
    """Seconds. ``concurrent`` ignores it; ``recipients`` and ``bytes`` with ``window = 0``
    limit each message (recipients per message, size of a message)."""
    ipv4_prefix: int = 32
    """When the key is an IPv4 address, count its network of this length (24: a /24)."""
    ipv6_prefix: int = 128
    """When the key is an IPv6 address, count its network of this length (64: a /64)."""
    name: str = ""
    """The rule's name in logs, in ``transaction.results`` and in the shared counters' keys;
    default ``what:key:window``. Two nodes sharing Redis count together under the same name."""
    text: str = ""
    """The refusal's text instead of the standard one."""
    expression: Expression = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            self.expression = Expression(self.key, boolean=False)
        except ExpressionError as exc:
            raise ValueError(f"key: a valid CEL expression: {exc}") from None
        sample = self.expression.evaluate(Session(client_ip="192.0.2.1"), None)
        if not isinstance(sample, str | int) or isinstance(sample, bool):
            raise ValueError(f"key: must give a string, not {type(sample).__name__}")
        if self.window < 0 or (self.window == 0 and self.what not in (*PER_MESSAGE, "concurrent")):
            raise ValueError("window: a positive number of seconds (0 only for recipients, bytes)")
        if not 0 <= self.ipv4_prefix <= 32:
            raise ValueError("ipv4_prefix: a prefix length from 0 to 32")
        if not 0 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix: a prefix length from 0 to 128")
        for value in (self.max.default, *(v for _, v in self.max.rules)):
            if value < 0:
                raise ValueError("max: must not be negative")
        if not self.name:
            network = ""
            if (self.ipv4_prefix, self.ipv6_prefix) != (32, 128):
                network = f"/{self.ipv4_prefix},/{self.ipv6_prefix}"
            window = "" if self.what == "concurrent" else f":{self.window:g}"
            self.name = f"{self.what}:{self.key}{network}{window}"

    @property
    def per_message(self) -> bool:
        """True for a per-message limit (recipients or bytes with ``window = 0``)."""
        return self.window == 0 and self.what in PER_MESSAGE

    def counter_key(self, session: Session, transaction: object) -> str:
        """The key to count under for this session/transaction ("" when it does not count).

        Raises ``ValueError`` when the expression fails or gives something else than a string
        or a number (the plugin's ``on_error`` then applies).
        """
        value = self.expression.evaluate(session, transaction)  # type: ignore[arg-type]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"limit {self.name}: key gave {type(value).__name__}, not a string")
        return network_of(str(value), self.ipv4_prefix, self.ipv6_prefix)


def network_of(value: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """`value` itself, or, when it is an IP address and the prefix is shorter than the whole
    address, its network (``192.0.2.0/24``). IPv4-mapped IPv6 addresses count as IPv4."""
    if not value or (ipv4_prefix == 32 and ipv6_prefix == 128):
        return value
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return value
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    if prefix == address.max_prefixlen:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(slots=True)
class LimitsSettings:
    """The keys of ``conf.d/15-limits.toml``."""

    limit: list[LimitRule] = field(default_factory=list)
    """The rules, each a ``[[limit]]`` table; every rule is checked (all must allow)."""
    redis: str = ""
    """``redis://host:port/db``: counters shared by every node using this Redis. Empty: in
    this process's memory."""
    redis_timeout: float = 1.0
    """Seconds to wait for Redis (connect and each command) before the plugin fails and its
    ``on_error`` applies."""
    redis_connections: int = 32
    """Redis: connections kept per process; a check that finds them all busy waits (at most
    `redis_timeout`)."""
    key_prefix: str = "mailgate:limits:"
    """Prefix of the Redis keys (several mailgate clusters may share one Redis)."""
    sliding: bool = True
    """Sliding windows (the count of the last `window` seconds, weighing the previous fixed
    window by how much of it is still inside); false: fixed windows that start afresh at each
    multiple of `window`."""
    max_keys: int = 100_000
    """In memory: the most counters kept; the least recently used is forgotten past it (that
    key then counts from zero). Concurrent counts are not part of it: there is one per open
    session at most."""
    session_lifetime: float = 3600.0
    """Redis: seconds after which a ``concurrent`` slot is released even if the node that
    held it never said so (it crashed)."""

    def __post_init__(self) -> None:
        if self.redis and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis: a URL such as redis://127.0.0.1:6379/0")
        if self.max_keys < 1:
            raise ValueError("max_keys: must be at least 1")
        if self.redis_timeout <= 0:
            raise ValueError("redis_timeout: must be positive")
        if self.redis_connections < 1:
            raise ValueError("redis_connections: must be at least 1")
        if self.session_lifetime <= 0:
            raise ValueError("session_lifetime: must be positive")
        names = [r.name for r in self.limit]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"limit: two rules are named {name!r}: give each a name")
