"""The ``arc`` plugin: validate the chain a message arrived with, note a trusted newest sealer,
then seal the mail chosen by ``seal_when``."""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any

from mailgate import Message, Session, Transaction, hookimpl
from mailgate.authentication_results import results_of
from mailgate.dns import DnsSettings, sync_resolver
from mailgate.logging import get_logger
from mailgate.plugins.arc.chain import HEADER_NAMES, Validation, validate
from mailgate.plugins.arc.seal import SealRefused, seal_message
from mailgate.plugins.arc.settings import ArcSettings

log = get_logger("mailgate.plugins.arc")

RESULT_KEY = "arc"
"""The key of this plugin's entry in ``transaction.results``."""

TRUSTED_NOTE = "arc_trusted"
"""``transaction.notes[TRUSTED_NOTE]``: the domain of a trusted newest sealer of a chain that
passed; also recorded as ``transaction.results["arc_trusted"]`` (result ``pass``), which is
what a DMARC ``override`` rule can test (expressions see results, not notes)."""

SEALED_NOTE = "arc.sealed"
"""``transaction.notes[SEALED_NOTE]``: the set mailgate added, ``{i, d, s, cv}``."""


class Arc:
    """Validates the Authenticated Received Chain (RFC 8617) and seals as an intermediary."""

    Settings = ArcSettings
    reads: frozenset[str] = frozenset({"headers", "body"})
    """The ARC-Message-Signature covers headers and body."""

    def __init__(self, settings: ArcSettings | None = None, *, dns: DnsSettings | None = None):
        self.settings = settings or ArcSettings()
        self.resolver = sync_resolver(dns or DnsSettings())

    @hookimpl
    async def on_message(
        self, session: Session, transaction: Transaction, message: Message
    ) -> None:
        """Validate the chain (unless an earlier ``arc`` did), then seal if asked to."""
        if message.withheld:
            return
        sealing = self.settings.seal is not None and self.settings.seal_when(session, transaction)
        if self.settings.verify or (sealing and RESULT_KEY not in transaction.results):
            # A seal's cv= must say what the chain is: without a result, validate first.
            await self.verify(session, transaction, message)
        if sealing:
            await self.seal(session, transaction, message)

    async def verify(self, session: Session, transaction: Transaction, message: Message) -> None:
        """Validate the chain and record the result (``transaction.results["arc"]``)."""
        if not any(h.name.lower() in HEADER_NAMES for h in message.arrived_headers):
            # No chain (most mail): nothing to parse or look up, so no worker thread either.
            validation = Validation("none", "")
        else:
            data = message.as_bytes(arrived=True)  # the chain as it arrived
            validation = await asyncio.to_thread(
                validate, data, self.resolver, timeout=self.settings.verify_timeout
            )
        _record(session, transaction, validation)
        trusted = self._trusted(session, transaction, validation)
        if trusted:
            transaction.notes[TRUSTED_NOTE] = trusted
            transaction.set_result(
                TRUSTED_NOTE, "pass", reason=f"trusted ARC sealer {trusted}", sealer=trusted
            )
        if validation.result != "none":
            log.info(
                "arc",
                result=validation.result,
                reason=validation.reason,
                sealers=[s.domain for s in validation.sets],
                trusted=trusted,
            )

    def _trusted(self, session: Session, transaction: Transaction, validation: Validation) -> str:
        """The newest sealer's domain if the chain passed and that sealer is trusted, else ""."""
        if validation.result != "pass":
            return ""
        sealer = validation.sealer
        for domain in self.settings.trusted_sealers:
            if sealer == domain or sealer.endswith(f".{domain}"):
                return sealer if self.settings.trust_when(session, transaction) else ""
        return ""

    async def seal(self, session: Session, transaction: Transaction, message: Message) -> None:
        """Add the next ARC set at the top of the message (ARC-Seal first)."""
        settings = self.settings
        assert settings.seal is not None
        authserv_id = settings.authserv_id or _fqdn()
        try:
            fields = await asyncio.to_thread(
                seal_message,
                message.as_bytes(),
                authserv_id=authserv_id,
                resinfo="; ".join(r.text() for r in results_of(session, transaction)) or "none",
                domain=settings.seal.domain,
                selector=settings.seal.selector,
                key=settings.seal.key,
                headers=settings.headers,
            )
        except SealRefused as exc:
            log.warning("arc seal not added", reason=str(exc))
            return
        for name, value in reversed(fields):
            transaction.insert_header(0, name, value)
        seal = dict(_tag_pairs(fields[0][1]))
        transaction.notes[SEALED_NOTE] = {
            "i": int(seal.get("i", "0")),
            "d": settings.seal.domain,
            "s": settings.seal.selector,
            "cv": seal.get("cv", ""),
        }


def _record(session: Session, transaction: Transaction, validation: Validation) -> None:
    properties: dict[str, Any] = {}
    if validation.result == "pass":
        if validation.oldest_pass:
            properties["header.oldest-pass"] = str(validation.oldest_pass)
        if session.client_ip:
            properties["smtp.remote-ip"] = session.client_ip
    transaction.set_result(
        RESULT_KEY,
        validation.result,
        reason=validation.reason,
        auth_method="arc",
        auth_properties=properties,
        chain=[s.as_dict() for s in validation.sets],
        sealers=[s.domain for s in validation.sets],
        temporary=validation.temporary,
    )


def _tag_pairs(value: str) -> list[tuple[str, str]]:
    pairs = []
    for part in value.split(";"):
        name, eq, text = part.partition("=")
        if eq:
            pairs.append((name.strip(), "".join(text.split())))
    return pairs


@functools.cache
def _fqdn() -> str:
    return socket.getfqdn()
