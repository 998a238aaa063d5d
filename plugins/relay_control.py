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

Configured in the ``[relay_control]`` table of ``mailgate.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.config import Networks
from mailgate.expressions import ip_in
from mailgate.plugin import hookimpl
from mailgate.routing import routing_reason, valid_domain
from mailgate.session import Address, Session
from mailgate.verdict import Verdict


@dataclass(slots=True)
class RelayControlSettings:
    """The ``[relay_control]`` table."""

    domains: list[str] = field(default_factory=list)
    """Domains mailgate receives mail for; ``.example.org`` means every sub-domain of it."""
    networks: Networks = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Clients in these networks may send to any domain (relay)."""
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


class RelayControl:
    """Refuses recipients mailgate must not relay to (see the module docstring)."""

    Settings = RelayControlSettings
    reads: frozenset[str] = frozenset()
    """Envelope only (it has no content hooks)."""

    def __init__(self, settings: RelayControlSettings | None = None) -> None:
        self.settings = settings or RelayControlSettings()
        exact: set[str] = set()
        subs: list[str] = []
        for d in self.settings.domains:
            d = d.lower().rstrip(".")
            if d.startswith("."):
                subs.append(d)
            else:
                exact.add(d)
        self._exact = frozenset(exact)
        self._subs = tuple(subs)
        self._networks = tuple(self.settings.networks)

    def local_domain(self, domain: str) -> bool:
        """True if mail for `domain` is accepted from anyone."""
        if not valid_domain(domain):
            return False
        domain = domain.lower().rstrip(".")
        return domain in self._exact or (bool(self._subs) and domain.endswith(self._subs))

    def may_relay(self, session: Session) -> bool:
        """True if this client may send to any domain."""
        if session.auth_login and self.settings.authenticated_may_relay:
            return True
        return ip_in(session.client_ip, self._networks)

    @hookimpl
    def on_rcpt(self, session: Session, recipient: Address) -> Verdict | None:
        """Refuse a recipient outside `domains` from a client that may not relay."""
        if session.ingress == "milter" and not self.settings.check_milter:
            return None
        if session.ingress == "policy" and not self.settings.check_policy:
            return None
        if self.may_relay(session):
            return None
        routing = None
        if not self.settings.allow_untrusted_routing:
            routing = routing_reason(recipient.address)
        if routing is None and self.local_domain(recipient.domain):
            return None
        reason = f"relay to {recipient.domain or recipient.address} from {session.client_ip}"
        if routing is not None:
            reason = f"{reason}: {routing} in {recipient.address!r}"
        return Verdict.reject(
            self.settings.reply_code, "5.7.1", self.settings.reply_text, reason=reason
        )
