"""Relay control: who may send mail through mailgate to where. On by default.

A recipient is accepted when its domain is one of ``domains`` (``example.org`` matches exactly,
``.example.org`` matches any sub-domain), or when the client is in ``networks``, or when the
client authenticated (``authenticated_may_relay``). Anything else gets
``554 5.7.1 Relay access denied`` at RCPT, so mailgate is never an open relay.

A recipient in one of ``domains`` is still refused from a client that may not relay when its
local part carries routing (``user%elsewhere@example.org``, ``elsewhere!user@example.org``,
``"user@elsewhere"@example.org``, see `mailgate.routing`): the downstream may deliver it to
another domain. ``allow_untrusted_routing`` lets such addresses through, as Postfix's setting of
that name does.

Behind Postfix as a milter, Postfix has already decided who may relay
(``smtpd_relay_restrictions``, ``mynetworks``) before mailgate sees a recipient, and mailgate
cannot know its networks: relay control leaves milter traffic alone unless ``check_milter``
is set. The same holds for the policy listener (``check_policy_service``), which Postfix asks
from its own restriction lists, next to ``reject_unauth_destination``: relay control leaves it
alone unless ``check_policy`` is set.

``domains`` and ``networks`` may vary per transaction (rules read at each RCPT, so every
envelope variable is known), and they stay safe: a network that covers every address
(``0.0.0.0/0``, ``::/0``) is refused at load in any rule, and a rule whose expression fails at
run time counts as false, so the ``else`` value (closed by default) applies.

Configured in the ``[relay_control]`` table of ``mailgate.toml``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mailgate.config import Dynamic, Networks, fixed_dynamics
from mailgate.expressions import ip_in
from mailgate.plugin import hookimpl
from mailgate.routing import routing_reason, valid_domain
from mailgate.session import Address, Session, Transaction
from mailgate.verdict import Verdict


@dataclass(slots=True)
class RelayControlSettings:
    """The ``[relay_control]`` table."""

    domains: Dynamic[list[str]] = field(default=Dynamic.fixed([]))
    """Domains mailgate receives mail for; ``.example.org`` means every sub-domain of it. Per
    transaction: rules read at each RCPT (``listener``, ``client``, ``sender``, ``rcpt``...)."""
    networks: Dynamic[Networks] = field(default=Dynamic.fixed(["127.0.0.0/8", "::1/128"]))
    """Clients in these networks may send to any domain (relay). Per transaction: rules read
    at each RCPT, e.g. a wider list on the submission listener. A network covering every
    address (``0.0.0.0/0``, ``::/0``) is refused, in any rule."""
    authenticated_may_relay: bool = True
    """Clients that authenticated (SMTP AUTH) may send to any domain."""
    allow_untrusted_routing: bool = False
    """Accept recipients whose local part routes (``%``, ``!``, a quoted or second ``@``) from
    clients that may not relay, when their domain is one of `domains`. Off, as in Postfix:
    the downstream may route them to any domain."""
    reply_code: int = 554
    """The refusal's SMTP code (554, or 550 as some sites prefer)."""
    reply_text: str = "Relay access denied"
    """The refusal's text."""
    check_milter: bool = False
    """Also check recipients that come through the milter listener (Postfix already did)."""
    check_policy: bool = False
    """Also check recipients that come through the policy listener (Postfix decides relaying)."""

    def __post_init__(self) -> None:
        fixed_dynamics(self)
        for networks in self.networks.values():
            for text in networks:
                if ipaddress.ip_network(text, strict=False).prefixlen == 0:
                    raise ValueError(
                        f"networks: {text!r} lets every client relay (an open relay); list "
                        "the networks that may, or use authenticated_may_relay"
                    )


class _Domains:
    """One `domains` list, ready for matching: exact names and ``.sub-domain`` suffixes."""

    __slots__ = ("exact", "subs")

    def __init__(self, domains: list[str]) -> None:
        exact: set[str] = set()
        subs: list[str] = []
        for d in domains:
            d = d.lower().rstrip(".")
            if d.startswith("."):
                subs.append(d)
            else:
                exact.add(d)
        self.exact = frozenset(exact)
        self.subs = tuple(subs)

    def __contains__(self, domain: str) -> bool:
        return domain in self.exact or (bool(self.subs) and domain.endswith(self.subs))


class RelayControl:
    """Refuses recipients mailgate must not relay to (see the module docstring)."""

    Settings = RelayControlSettings
    reads: frozenset[str] = frozenset()
    """Envelope only (it has no content hooks)."""

    def __init__(self, settings: RelayControlSettings | None = None) -> None:
        self.settings = settings or RelayControlSettings()
        self._domains = self.settings.domains.map(_Domains)
        self._networks = self.settings.networks.map(tuple)

    def local_domain(
        self, domain: str, session: Session | None = None, transaction: Transaction | None = None
    ) -> bool:
        """True if mail for `domain` is accepted from anyone (in this transaction, when
        `domains` has rules: without a session only its ``else`` value counts)."""
        if not valid_domain(domain):
            return False
        domains = (
            self._domains.default
            if session is None or self._domains.is_fixed
            else self._domains.value(session, transaction)
        )
        return domain.lower().rstrip(".") in domains

    def may_relay(self, session: Session, transaction: Transaction | None = None) -> bool:
        """True if this client may send to any domain."""
        if session.auth_login and self.settings.authenticated_may_relay:
            return True
        networks = (
            self._networks.default
            if self._networks.is_fixed
            else self._networks.value(session, transaction)
        )
        return ip_in(session.client_ip, networks)

    def answers(self, hook: str, ingress: str) -> bool:
        """Whether `on_rcpt` may refuse for sessions from `ingress` (the milter and policy
        listeners' recipients are the MTA's to check, unless ``check_milter``/``check_policy``)."""
        if ingress == "milter":
            return self.settings.check_milter
        if ingress == "policy":
            return self.settings.check_policy
        return True

    @hookimpl
    def on_rcpt(
        self, session: Session, transaction: Transaction, recipient: Address
    ) -> Verdict | None:
        """Refuse a recipient outside `domains` from a client that may not relay."""
        if not self.answers("on_rcpt", session.ingress):
            return None
        if self.may_relay(session, transaction):
            return None
        routing = None
        if not self.settings.allow_untrusted_routing:
            routing = routing_reason(recipient.address)
        if routing is None and self.local_domain(recipient.domain, session, transaction):
            return None
        reason = f"relay to {recipient.domain or recipient.address} from {session.client_ip}"
        if routing is not None:
            reason = f"{reason}: {routing} in {recipient.address!r}"
        return Verdict.reject(
            self.settings.reply_code, "5.7.1", self.settings.reply_text, reason=reason
        )
