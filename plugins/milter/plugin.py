"""The `milter` plugin: external milters (protocol 2 or 6) as a step of the pipeline.

One ``conf.d`` file enables one milter (its keys at the top level) or several
(``milters = [...]``), called in list order: at each stage the first refusal answers, and at
the end of data each milter sees the message as the milters before it left it. Each milter is
a `BridgedMilter`.
"""

from __future__ import annotations

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.plugins.milter.bridged import BridgedMilter
from mailgate.plugins.milter.settings import MilterEntry, MilterSettings


class MilterPlugin:
    """Calls external milters (opendkim, rspamd, clamav-milter, ...) at the stages they want.

    Files in name order make the chain; a ``milters = [...]`` list is a chain in one file.
    """

    Settings = MilterSettings
    reads = frozenset({"headers", "body"})
    """The external milter is sent the whole message (whatever it asks for)."""

    def __init__(self, settings: MilterSettings | None = None) -> None:
        self.settings = settings or MilterSettings()
        self.milters = [
            _bridged(entry, f"milters[{i}]." if self.settings.milters else "")
            for i, entry in enumerate(self.settings.entries())
        ]
        self.name = self.milters[0].name if len(self.milters) == 1 else ""
        """The milter's name (logs, ``transaction.results``) when the file has one milter."""

    @hookimpl
    async def on_connect(self, session: Session) -> Verdict | None:
        """Tell each milter about the connection (CONNECT)."""
        for milter in self.milters:
            verdict = await milter.connect(session)
            if verdict is not None:
                return verdict
        return None

    @hookimpl
    async def on_helo(self, session: Session, name: str) -> Verdict | None:
        """HELO/EHLO (a second one is sent again)."""
        for milter in self.milters:
            verdict = await milter.helo(session, name)
            if verdict is not None:
                return verdict
        return None

    @hookimpl
    async def on_mail(self, session: Session, transaction: Transaction) -> Verdict | None:
        """MAIL FROM (an ABORT first if an earlier transaction was told)."""
        for milter in self.milters:
            verdict = await milter.mail(session, transaction)
            if verdict is not None:
                return verdict
        return None

    @hookimpl
    async def on_rcpt(
        self, session: Session, transaction: Transaction, recipient: Address
    ) -> Verdict | None:
        """RCPT TO: a refusal refuses this recipient only (the milters after it hear of it as
        a refused recipient, if they asked for those)."""
        for milter in self.milters:
            verdict = await milter.rcpt(session, transaction, recipient)
            if verdict is not None:
                return verdict
        return None

    @hookimpl
    async def on_rcpt_refused(
        self, session: Session, transaction: Transaction, recipient: Address, verdict: Verdict
    ) -> None:
        """A refused recipient, for the milters that asked for them (SMFIP_RCPT_REJ)."""
        for milter in self.milters:
            await milter.rcpt_refused(session, transaction, recipient, verdict)

    @hookimpl
    async def on_unknown(
        self, session: Session, transaction: Transaction | None, command: str
    ) -> Verdict | None:
        """An unknown SMTP command, for the milters that did not decline it (SMFIP_NOUNKNOWN):
        the first refusal answers it."""
        for milter in self.milters:
            verdict = await milter.unknown(session, transaction, command)
            if verdict is not None:
                return verdict
        return None

    @hookimpl
    async def on_data(self, session: Session, transaction: Transaction) -> Verdict | None:
        """DATA (protocol 4 and later)."""
        for milter in self.milters:
            verdict = await milter.data(session, transaction)
            if verdict is not None:
                return verdict
        return None

    @hookimpl
    async def on_message(self, session: Session, transaction: Transaction) -> Verdict | None:
        """Headers, body and end of message; each milter's actions become modifications
        before the next milter is sent the message."""
        for milter in self.milters:
            verdict = await milter.message(session, transaction)
            if verdict is not None:
                return verdict
        return None

    @hookimpl
    async def on_disconnect(self, session: Session) -> None:
        """QUIT and close the session's connections."""
        for milter in self.milters:
            await milter.disconnect(session)


def _bridged(entry: MilterEntry, where: str) -> BridgedMilter:
    """The milter of one entry; a refusal names the entry (``milters[1].tls_ca_file: ...``)."""
    try:
        return BridgedMilter(entry)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None
