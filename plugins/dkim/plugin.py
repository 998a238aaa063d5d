"""The ``dkim`` plugin: verify every signature of a message, then sign the mail chosen by
``sign_when`` with the keys of its From domain."""

from __future__ import annotations

import asyncio
import email.utils
import functools
from typing import Any

from mailgate import Message, Session, Transaction, hookimpl
from mailgate.dns import CacheMiss, DnsSettings, sync_resolver
from mailgate.plugins.dkim.settings import DkimSettings
from mailgate.plugins.dkim.sign import header_list, sign_message
from mailgate.plugins.dkim.verify import overall, verify_message

RESULT_KEY = "dkim"
"""The key of this plugin's entry in ``transaction.results``."""

INLINE_LIMIT = 128 * 1024
"""Messages up to this size are verified in the event loop when their keys are cached (about
0.1 ms for 10 KiB); larger ones in a worker thread, so hashing them blocks nothing else."""

SIGNED_NOTE = "dkim.signed"
"""``transaction.notes[SIGNED_NOTE]``: the signatures mailgate added, ``{d, s, a}`` each."""


class Dkim:
    """Verifies DKIM signatures (RFC 6376) and signs outgoing mail."""

    Settings = DkimSettings
    reads: frozenset[str] = frozenset({"headers", "body"})
    """Signatures cover headers and body."""

    def __init__(self, settings: DkimSettings | None = None, *, dns: DnsSettings | None = None):
        self.settings = settings or DkimSettings()
        self.dns = dns or DnsSettings()
        self.resolver = sync_resolver(self.dns)

    @hookimpl
    async def on_message(
        self, session: Session, transaction: Transaction, message: Message
    ) -> None:
        """Verify the signatures that came with the message, then sign it if it is ours."""
        if message.withheld:
            return
        if self.settings.verify:
            await self.verify(transaction, message)
        if self.settings.keys and self.settings.sign_when(session, transaction):
            await self.sign(transaction, message)

    async def verify(self, transaction: Transaction, message: Message) -> None:
        """Verify every DKIM-Signature and record the results (``transaction.results``)."""
        # Signatures are checked against the headers as they arrived, whatever the plugins
        # before this one changed at the end of data.
        if not any(h.name.lower() == "dkim-signature" for h in message.arrived_headers):
            transaction.set_result(
                RESULT_KEY, "none", reason="no signature", auth_results=[], signatures=[]
            )
            return
        data = message.as_bytes(arrived=True)
        verify = functools.partial(
            verify_message,
            data,
            self.resolver,
            max_signatures=self.settings.max_signatures,
            unsigned_body=self.settings.unsigned_body,
            timeout=self.settings.verify_timeout,
        )
        try:
            if len(data) > INLINE_LIMIT:
                raise CacheMiss("too large to verify in the event loop")
            # Keys in the DNS cache (most mail): verify here, without a worker thread.
            results = verify(cache_only=True)
        except CacheMiss:
            results = await asyncio.to_thread(verify)
        entries = [r.auth_result() for r in results]
        best = overall(results)
        assert best is not None  # there was a signature
        reason = f"{best.domain} ({best.selector}): {best.reason}" if best.reason else best.domain
        transaction.set_result(
            RESULT_KEY, best.result, reason=reason, auth_results=entries, signatures=entries
        )

    async def sign(self, transaction: Transaction, message: Message) -> None:
        """Add one DKIM-Signature per key of the From domain, above the other headers."""
        domain, keys = self.settings.keys_for(_from_domain(message))
        if not keys:
            return
        settings = self.settings
        names = header_list((h.name for h in message.headers), settings.headers, settings.oversign)
        header_canon, _, body_canon = settings.canonicalization.partition("/")
        data = message.as_bytes()
        values = await asyncio.to_thread(
            sign_message, data, domain, keys, names, (header_canon, body_canon)
        )
        for value in reversed(values):
            transaction.insert_header(0, "DKIM-Signature", value)
        signed: list[dict[str, Any]] = transaction.notes.setdefault(SIGNED_NOTE, [])
        signed += [{"d": domain, "s": s, "a": k.algorithm} for s, k in keys]


def _from_domain(message: Message) -> str:
    """The domain of the one From address, lower case; "" for none or several."""
    values = message.get_all("From")
    if len(values) != 1:
        return ""
    addresses = email.utils.getaddresses(values)
    if len(addresses) != 1 or "@" not in addresses[0][1]:
        return ""
    return addresses[0][1].rpartition("@")[2].lower().rstrip(".")
