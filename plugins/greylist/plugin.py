"""The ``greylist`` plugin: refuse the first attempt of an unknown (client, sender, recipient).

Real mail servers retry a temporary refusal; much spam software does not. Each recipient is
checked at RCPT TO: an unknown triplet gets ``450 4.7.1 Greylisted, try again in N seconds``,
and the retry passes once the delay has gone by (see `mailgate.plugins.greylist.triplet` for
the rules, docs/plugins/greylist.md for the settings as Postgrey users know them).

Not greylisted: authenticated clients, your own networks, the exemption expression, the
recipient domains and client names listed, and client networks whose mail got through
``auto_whitelist`` times. The state is kept in the store (the core ``[store]``, shared by the
nodes on one PostgreSQL) or in Redis. When it cannot be reached the hook raises and the
plugin's ``on_error`` applies (``tempfail`` by default).
"""

from __future__ import annotations

from mailgate.expressions import ip_in
from mailgate.logging import get_logger
from mailgate.plugin import hookimpl
from mailgate.plugins.greylist.redis_state import RedisState
from mailgate.plugins.greylist.settings import GreylistSettings
from mailgate.plugins.greylist.state import GreylistState, Policy, StoreState
from mailgate.plugins.greylist.triplet import Triplet
from mailgate.plugins.limits.redis_client import require_redis
from mailgate.session import Address, Session, Transaction
from mailgate.store import StoreSettings
from mailgate.verdict import Verdict

log = get_logger("mailgate.plugins.greylist")

COUNTED_NOTE = "greylist.counted"
"""``transaction.notes[COUNTED_NOTE]``: this message already counted towards the client's
automatic whitelisting (a message counts once, however many recipients it has)."""


class Greylist:
    """Greylists unknown triplets at RCPT TO (see the module docstring)."""

    Settings = GreylistSettings
    reads: frozenset[str] = frozenset()
    """Envelope only."""

    def __init__(
        self, settings: GreylistSettings | None = None, *, store: StoreSettings | None = None
    ) -> None:
        self.settings = s = settings or GreylistSettings()
        policy = Policy(s.timing, s.auto_whitelist, s.cleanup_interval)
        self.state: GreylistState
        if s.redis:
            require_redis()
            self.state = RedisState(
                s.redis,
                policy,
                timeout=s.redis_timeout,
                prefix=s.key_prefix,
                connections=s.redis_connections,
            )
        else:
            store_settings = StoreSettings(url=s.store) if s.store else store or StoreSettings()
            self.state = StoreState(store_settings, policy)
        self._networks = tuple(s.exempt_networks)

    def exempt(self, session: Session, transaction: Transaction, recipient: Address) -> str:
        """Why this attempt is not greylisted, or ""."""
        s = self.settings
        if s.exempt_authenticated and session.auth_login:
            return "authenticated"
        if self._networks and ip_in(session.client_ip, self._networks):
            return "network"
        if _in_domains(recipient.domain, s.exempt_recipient_domains):
            return "recipient domain"
        if session.client_name and _under(session.client_name.lower(), s.exempt_client_names):
            return "client name"
        if s.exempt is not None and s.exempt(session, transaction):
            return "expression"
        return ""

    @hookimpl
    async def on_rcpt(
        self, session: Session, transaction: Transaction, recipient: Address
    ) -> Verdict | None:
        """Refuse the recipient with 450 4.7.1 unless its triplet may pass."""
        why = self.exempt(session, transaction, recipient)
        if why:
            transaction.set_result("greylist", "exempt", reason=why)
            return None
        s = self.settings
        triplet = Triplet.of(
            session.client_ip,
            transaction.sender.address,
            recipient.address,
            s.ipv4_prefix,
            s.ipv6_prefix,
        )
        outcome = await self.state.check(triplet, not transaction.notes.get(COUNTED_NOTE))
        if outcome.allowed:
            transaction.notes[COUNTED_NOTE] = True
            result = "whitelisted" if outcome.whitelisted else "pass"
            transaction.set_result("greylist", result, reason=triplet.client)
            if outcome.first_pass:
                log.info("greylist passed", client=triplet.client, sender=triplet.sender)
            return None
        transaction.set_result("greylist", "greylisted", reason=triplet.client)
        text = s.text.replace("{seconds}", str(outcome.wait))
        reason = f"greylisted {triplet.client} {triplet.sender} -> {triplet.recipient}"
        return Verdict.tempfail(450, "4.7.1", text, reason=reason)


def _in_domains(domain: str, domains: list[str]) -> bool:
    domain = domain.lower().rstrip(".")
    return any(domain == d or (d.startswith(".") and domain.endswith(d)) for d in domains)


def _under(name: str, parents: list[str]) -> bool:
    name = name.rstrip(".")
    return any(name == p or name.endswith("." + p) for p in parents)
