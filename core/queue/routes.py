"""Routes: where the queue sends each recipient (the ``[[queue.route]]`` tables).

A route is chosen per recipient: the first route whose `RouteSettings.when` is true for the
message's sender and that recipient; when none is, the default route (``[queue] next_hop``, or
``[relay] address``, spoken to with ``[relay]``'s STARTTLS settings). A route sends to a fixed
next hop, its hosts tried in order (``next_hop``), or to the MX hosts of the recipient's domain
(``mx = true``, `mailgate.queue.mx`). How a route's connections are made and shared is
`mailgate.queue.destinations`.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from dataclasses import dataclass, field
from typing import Literal

from mailgate.config import HostPort
from mailgate.config.dynamic import Dynamic
from mailgate.expressions import Expression, ExpressionError
from mailgate.relay.settings import RelaySettings
from mailgate.session import Address, Session, Transaction
from mailgate.sockaddr import parse_host_port

TlsMode = Literal["opportunistic", "required", "none"]

DEFAULT_DESTINATION_CONCURRENCY = 20
"""Connections at once to one destination (Postfix's ``default_destination_concurrency_limit``)."""

_STARTTLS = {"opportunistic": "opportunistic", "required": "require", "none": "never"}
"""A route's ``tls`` as ``[relay] starttls`` spells it."""


@dataclass(slots=True)
class RouteSettings:
    """One ``[[queue.route]]`` table."""

    when: str = ""
    """A CEL expression over ``sender`` and ``rcpt`` (``{address, local, domain}``, the
    recipient being routed) and ``size``; "": every recipient (a catch-all route)."""

    name: str = ""
    """The route's name in logs; "": ``route[N]`` (its place among the routes, from 0)."""

    next_hop: list[HostPort] = field(default_factory=list)
    """Fixed next hop: ``"HOST:PORT"``, then failover hosts, tried in this order."""

    mx: bool = False
    """Send to the MX hosts of the recipient's domain, looked up through ``[dns]``."""

    mx_port: int = 25
    """The port of the MX hosts (another port: tests, and sites running SMTP elsewhere)."""

    tls: TlsMode = "opportunistic"
    """``opportunistic``: STARTTLS when offered; ``required``: never in clear (not offered,
    or the handshake fails: the recipients are deferred); ``none``: no STARTTLS."""

    tls_verify: bool = False
    """Check the certificate and its name (the MX host's name, or the ``next_hop`` host)."""

    tls_ca_file: str = ""
    """The CA bundle `tls_verify` checks against; "": the system's."""

    destination_concurrency: int = 0
    """Connections at once to one destination of this route (its next hop, or one recipient
    domain for ``mx``); 0: ``[queue] destination_concurrency``."""

    condition: Expression | None = field(default=None, init=False, repr=False, compare=False)
    """`when`, compiled (not a configuration key)."""

    def __post_init__(self) -> None:
        if self.when:
            try:
                self.condition = Expression(self.when)
            except ExpressionError as exc:
                raise ValueError(f"when: expected a valid CEL expression: {exc}") from None
        if bool(self.next_hop) == self.mx:
            raise ValueError('expected either next_hop = ["HOST:PORT", ...] or mx = true')
        for hop in self.next_hop:
            if parse_host_port(hop, key="next_hop")[1] == 0:
                raise ValueError("next_hop: a port from 1 to 65535 for every host")
        if not 0 < self.mx_port <= 65535:
            raise ValueError("mx_port: a port from 1 to 65535")
        if self.tls == "none" and (self.tls_verify or self.tls_ca_file):
            raise ValueError('tls_verify: needs tls = "opportunistic" or "required"')
        if self.tls_ca_file and not os.access(self.tls_ca_file, os.R_OK):
            raise ValueError("tls_ca_file: not a readable file")
        if self.destination_concurrency < 0:
            raise ValueError("destination_concurrency: at least 1 (0: the [queue] default)")


class Route:
    """A route ready for use: its settings, the ``[relay]`` settings its connections are made
    with (its TLS policy in them) and its TLS context, made once."""

    __slots__ = ("concurrency", "connection", "name", "settings", "tls")

    def __init__(self, settings: RouteSettings, relay: RelaySettings, concurrency: int) -> None:
        self.settings = settings
        self.name = settings.name
        self.concurrency = settings.destination_concurrency or concurrency
        address = settings.next_hop[0] if settings.next_hop else relay.address.default
        self.connection = dataclasses.replace(
            relay,
            address=Dynamic.fixed(address),
            starttls=_STARTTLS[settings.tls],
            tls_verify=settings.tls_verify,
            tls_ca_file=settings.tls_ca_file,
            xclient=False,
            xforward=False,
        )
        """How the hosts of this route are spoken to (XCLIENT and XFORWARD off: the queue
        has no client session to present)."""
        self.tls = tls_context(settings) if settings.tls != "none" else None

    @property
    def mx(self) -> bool:
        """True when the route sends to the recipient domain's MX hosts."""
        return self.settings.mx

    def destination(self, recipient: Address) -> str:
        """The destination `recipient` goes to on this route: the recipient's domain (lower
        case) for an MX route, "" for a fixed next hop (one destination for the route)."""
        return recipient.domain.lower() if self.settings.mx else ""

    def matches(self, session: Session, transaction: Transaction) -> bool:
        """True if this route takes the transaction's (only) recipient."""
        return self.settings.condition is None or self.settings.condition(session, transaction)


def tls_context(settings: RouteSettings) -> ssl.SSLContext:
    """The client TLS context of a route: verifying (against `tls_ca_file` or the system's
    CAs) only with `tls_verify`."""
    context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def default_route(next_hop: str, relay: RelaySettings) -> RouteSettings:
    """The route taken when no ``[[queue.route]]`` matches: ``[queue] next_hop`` (or ``[relay]
    address``) with ``[relay]``'s STARTTLS settings."""
    tls: TlsMode = {"require": "required", "never": "none"}.get(  # type: ignore[assignment]
        relay.starttls, "opportunistic"
    )
    verify = relay.tls_verify and tls != "none"
    return RouteSettings(
        name="default",
        next_hop=[next_hop or relay.address.default],
        tls=tls,
        tls_verify=verify,
        tls_ca_file=relay.tls_ca_file if verify else "",
    )


class Router:
    """Chooses the route of each recipient: the first whose ``when`` is true, else the
    default."""

    def __init__(
        self,
        routes: list[RouteSettings],
        default: RouteSettings,
        relay: RelaySettings,
        concurrency: int,
    ) -> None:
        self.routes = [Route(r, relay, concurrency) for r in routes]
        self.default = Route(default, relay, concurrency)
        # Routes see only the envelope: the client's session is not kept in the queue.
        self._session = Session(client_ip="", listener="queue", ingress="queue")

    def route(self, sender: Address, recipient: Address) -> Route:
        """The route of `recipient` in a message from `sender`."""
        if not self.routes:
            return self.default
        transaction = Transaction(sender, [recipient])
        for route in self.routes:
            if route.matches(self._session, transaction):
                return route
        return self.default
