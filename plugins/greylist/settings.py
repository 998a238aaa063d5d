"""The ``greylist`` plugin's settings (``conf.d/16-greylist.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.config import Networks
from mailgate.expressions import Expression
from mailgate.plugins.greylist.triplet import Timing
from mailgate.store.settings import StoreSettings


@dataclass(slots=True)
class GreylistSettings:
    """The keys of the greylist plugin's conf.d file."""

    delay: float = 300.0
    """Seconds a new triplet must wait before a retry passes (Postgrey's ``--delay``)."""
    retry_window: float = 4 * 3600.0
    """Seconds after the first attempt within which the retry must come; later, the wait
    starts again."""
    pass_lifetime: float = 35 * 86400.0
    """Seconds a triplet that passed keeps passing after its last message (Postgrey's
    ``--max-age``, 35 days); also how long an automatically whitelisted client stays so."""
    auto_whitelist: int = 5
    """A client network whose messages got through this many times is no longer greylisted
    (Postgrey's ``--auto-whitelist-clients``); 0 turns it off."""
    ipv4_prefix: int = 24
    """The client's network, IPv4 (Postgrey's ``--lookup-by-subnet``: /24); 32: the address."""
    ipv6_prefix: int = 64
    """The client's network, IPv6; 128: the address."""
    exempt: Expression | None = None
    """Not greylisted when this CEL expression is true (``'tls && client.name != ""'``)."""
    exempt_authenticated: bool = True
    """Clients that authenticated are not greylisted."""
    exempt_networks: Networks = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Clients in these networks are not greylisted (your own networks)."""
    exempt_recipient_domains: list[str] = field(default_factory=list)
    """Recipients in these domains (``.example.org``: its sub-domains) are not greylisted
    (Postgrey's ``whitelist_recipients``)."""
    exempt_client_names: list[str] = field(default_factory=list)
    """Clients whose confirmed reverse name is one of these or under them
    (``google.com`` matches ``mail-x.google.com``) are not greylisted (Postgrey's
    ``whitelist_clients``; needs ``[dns] reverse_lookups``)."""
    text: str = "Greylisted, try again in {seconds} seconds"
    """The 450 4.7.1 reply's text; ``{seconds}`` is the time left."""
    redis: str = ""
    """``redis://host:port/db``: keep the state in Redis instead of the store."""
    redis_timeout: float = 1.0
    """Seconds to wait for Redis before the plugin fails (its ``on_error`` applies)."""
    redis_connections: int = 32
    """Redis: connections kept per process; a check that finds them all busy waits."""
    key_prefix: str = "mailgate:greylist:"
    """Prefix of the Redis keys."""
    store: str = ""
    """A store URL (``sqlite:///...``, ``postgresql://...``) for the state; empty: the core
    ``[store]`` of mailgate.toml."""
    cleanup_interval: float = 3600.0
    """Seconds between deletions of expired triplets and clients from the store."""

    def __post_init__(self) -> None:
        for name in ("delay", "retry_window", "pass_lifetime", "redis_timeout", "cleanup_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.retry_window <= self.delay:
            raise ValueError("retry_window: must be longer than delay")
        if self.redis_connections < 1:
            raise ValueError("redis_connections: must be at least 1")
        if self.auto_whitelist < 0:
            raise ValueError("auto_whitelist: must not be negative")
        if not 0 <= self.ipv4_prefix <= 32:
            raise ValueError("ipv4_prefix: a prefix length from 0 to 32")
        if not 0 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix: a prefix length from 0 to 128")
        if self.redis and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis: a URL such as redis://127.0.0.1:6379/0")
        if self.redis and self.store:
            raise ValueError("store: not with redis (the state is kept in one place)")
        if self.store:
            try:
                StoreSettings(url=self.store)
            except ValueError as exc:
                raise ValueError(f"store: {str(exc).removeprefix('url: ')}") from None
        domains = self.exempt_recipient_domains
        self.exempt_recipient_domains = [d.lower().rstrip(".") for d in domains]
        self.exempt_client_names = [n.lower().strip(".") for n in self.exempt_client_names]

    @property
    def timing(self) -> Timing:
        """The three delays."""
        return Timing(self.delay, self.retry_window, self.pass_lifetime)
