"""Sender ownership: an authenticated client may only use its own addresses in MAIL FROM.

On by default, right after relay control. Sessions that did not authenticate are not
affected. A login owns:

- the address equal to the login (case-insensitive), when the login is an address;
- ``login@domain`` for each of ``domains``, when the login has no ``@``;
- whatever ``allowed`` lists for it: ``"bob@example.org"`` (one address) or ``"@example.org"``
  (every address of that domain); the key ``"*"`` applies to every login.

- with ``use_directory`` (the default), the addresses the directory lists for the login
  (``senders``: its own addresses and aliases; ``@example.org`` for a whole domain), when a
  directory backend is enabled (docs/directory.md). A dead directory follows the backend's
  ``on_error`` (default ``451 4.3.0``).

A sub-address (``alice+news@example.org``) belongs to whoever owns ``alice@example.org``.
Anything else gets ``553 5.7.1 Sender address not owned by user LOGIN``.

Configured in the ``[sender_auth]`` table of ``mailgate.toml``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

from mailgate.directory import (
    DirectoryUnavailable,
    Question,
    active_lookup,
    ask,
    unavailable_verdict,
)
from mailgate.plugin import hookimpl
from mailgate.session import Address, Session
from mailgate.verdict import Verdict


@dataclass(slots=True)
class SenderAuthSettings:
    """The ``[sender_auth]`` table."""

    domains: list[str] = field(default_factory=list)
    """A login without ``@`` (``alice``) owns ``alice@DOMAIN`` for each of these."""
    allowed: dict[str, list[str]] = field(default_factory=dict)
    """Extra addresses per login: ``{ "alice@example.org" = ["@example.net", "bob@x.org"] }``;
    ``"*"`` applies to every login."""
    subaddress_delimiter: str = "+"
    """``alice+tag@...`` counts as ``alice@...``; empty: no sub-addresses."""
    allow_null_sender: bool = True
    """Authenticated clients may send with ``MAIL FROM:<>`` (bounces, vacation replies)."""
    use_directory: bool = True
    """Also allow the addresses the directory lists for the login (``senders``)."""
    reply_code: int = 553
    """The refusal's SMTP code."""


class SenderAuth:
    """Refuses MAIL FROM addresses the authenticated login does not own."""

    Settings = SenderAuthSettings
    reads: frozenset[str] = frozenset()
    """Envelope only (it has no content hooks)."""

    def __init__(self, settings: SenderAuthSettings | None = None) -> None:
        self.settings = settings or SenderAuthSettings()
        if len(self.settings.subaddress_delimiter) > 1:
            raise ValueError("subaddress_delimiter must be one character or empty")
        self._domains = tuple(d.lower().strip(".") for d in self.settings.domains)
        self._allowed = {
            login.lower(): tuple(p.lower() for p in patterns)
            for login, patterns in self.settings.allowed.items()
        }

    def owns(self, login: str, address: str) -> bool:
        """True if `login` may use `address` as its sender."""
        login, address = login.lower(), self._base_address(address.lower())
        if address == login:
            return True
        local, _, domain = address.rpartition("@")
        if "@" not in login and local == login and domain in self._domains:
            return True
        patterns = self._allowed.get(login, ()) + self._allowed.get("*", ())
        return any(p == address or (p.startswith("@") and p[1:] == domain) for p in patterns)

    def _base_address(self, address: str) -> str:
        delimiter = self.settings.subaddress_delimiter
        local, at, domain = address.rpartition("@")
        if not delimiter or not at or delimiter not in local:
            return address
        return f"{local.partition(delimiter)[0]}@{domain}"

    async def owns_in_directory(self, session: Session, login: str, address: str) -> bool:
        """True if the directory lists `address` (or its domain) among `login`'s senders."""
        entry = await ask(session, Question.SENDERS, login)
        if entry is None or not entry.found:
            return False
        address = self._base_address(address.lower())
        domain = address.rpartition("@")[2]
        allowed = {a.lower() for a in entry.addresses}
        return address in allowed or f"@{domain}" in allowed

    @hookimpl
    def on_mail(
        self, session: Session, sender: Address
    ) -> Verdict | Awaitable[Verdict | None] | None:
        """Refuse a sender the session's login does not own; unauthenticated: no opinion.

        When the static rules do not allow it and a directory is enabled, the answer is a
        coroutine asking the directory (the pipeline awaits it).
        """
        login = session.auth_login
        if not login:
            return None
        if not sender.address and self.settings.allow_null_sender:
            return None
        if sender.address and self.owns(login, sender.address):
            return None
        if sender.address and self.settings.use_directory and active_lookup.get() is not None:
            return self._ask_directory(session, login, sender.address)
        return self._refusal(login, sender.address)

    async def _ask_directory(self, session: Session, login: str, address: str) -> Verdict | None:
        try:
            if await self.owns_in_directory(session, login, address):
                return None
        except DirectoryUnavailable as exc:
            return unavailable_verdict(exc)
        return self._refusal(login, address)

    def _refusal(self, login: str, address: str) -> Verdict:
        return Verdict.reject(
            self.settings.reply_code,
            "5.7.1",
            f"Sender address not owned by user {login}",
            reason=f"{login} may not send as <{address}>",
        )
