"""`RelayEgress`: the before-queue proxy's way out, one downstream transaction per message.

The downstream transaction opens at MAIL FROM and follows the client's RCPTs, so each
downstream verdict reaches the client at the command it belongs to. At the end of data the
envelope plugins left is applied: recipients they added get their RCPT; if they changed the
sender or removed a recipient the downstream already has, the envelope is replayed after RSET.
Any refusal there makes the whole message a 4xx, never a partial delivery.
"""

from __future__ import annotations

import re

from mailgate.egress import Reply
from mailgate.logging import get_logger
from mailgate.relay import reply as replies
from mailgate.relay.connection import DownstreamConnection, DownstreamError
from mailgate.relay.pool import ConnectionPool
from mailgate.relay.settings import RelaySettings
from mailgate.relay.xforward import client_identity, xclient_command
from mailgate.relay.xforward import commands as xforward_commands
from mailgate.session import Address, Session, Transaction

log = get_logger("mailgate.relay")

_Key = tuple[str, tuple[str, ...]]

_PLAIN_HELO = re.compile(r"[\x21-\x7e]{1,255}\Z")
"""A client HELO name mailgate repeats in its own EHLO after XCLIENT; any other is replaced by
mailgate's name (XCLIENT's HELO attribute, xtext-encoded, still carries it)."""


def _key(address: Address) -> _Key:
    return address.address.lower(), tuple(address.params)


class RelayEgress:
    """Relays each message downstream while the client waits (`mailgate.egress.Egress`).

    A quarantined message is not its business: the flow stores it and never hands it over.
    """

    holds_quarantined = False

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.name = f"relay {settings.address.default}"
        self.pools = {
            address: ConnectionPool(settings, address=address)
            for address in dict.fromkeys(settings.address.values())
        }
        """One pool per downstream address `address` can choose: a connection is reused only
        for a transaction that goes to the same address."""
        self.pool = self.pools[settings.address.default]
        """The pool of the default address; `pool.opened` counts connections made."""
        self.open_transactions = 0
        """Downstream transactions begun and not yet delivered or aborted."""

    async def begin(
        self, session: Session, transaction: Transaction
    ) -> tuple[Reply, RelayTransaction | None]:
        """Send MAIL FROM downstream; a 4xx reply (never an exception) if that is impossible."""
        limit = self.settings.max_transactions
        if limit and self.open_transactions >= limit:
            log.info("downstream transaction limit reached", limit=limit)
            return replies.TOO_MANY_TRANSACTIONS, None
        owner = client_identity(session, transaction) if self.settings.xclient else ""
        pool = self.pool_for(session, transaction)
        try:
            conn, reused = await pool.acquire(owner)
            try:
                await self.introduce(conn, session, transaction)
                reply = await conn.mail_from(transaction.sender)
            except DownstreamError:
                if not reused:
                    raise
                # The pooled connection went stale while idle: one fresh attempt is safe,
                # nothing was accepted on the old one.
                conn = await pool.open_new()
                await self.introduce(conn, session, transaction)
                reply = await conn.mail_from(transaction.sender)
        except DownstreamError as exc:
            return exc.reply, None
        if not reply.ok:
            pool.release(conn)
            return reply, None
        self.open_transactions += 1
        return reply, RelayTransaction(self, conn, transaction.sender, pool)

    def pool_for(self, session: Session, transaction: Transaction) -> ConnectionPool:
        """The pool of the downstream address for this transaction (``address`` rules)."""
        address = self.settings.address
        if address.is_fixed:
            return self.pool
        return self.pools[address.value(session, transaction)]

    async def introduce(
        self, conn: DownstreamConnection, session: Session, transaction: Transaction
    ) -> None:
        """Tell the downstream who the client is: XCLIENT once per connection, then XFORWARD
        per transaction (only the transaction id after XCLIENT)."""
        offered = conn.extensions.get("xclient")
        if self.settings.xclient and offered is not None:
            identity = client_identity(session, transaction)
            if conn.owner != identity:
                helo = session.helo if _PLAIN_HELO.match(session.helo) else self.pool.helo_name
                command = xclient_command(offered, session, transaction)
                await conn.xclient(command, helo, identity)
        await self.xforward(conn, session, transaction)

    async def end_session(self, session: Session) -> None:
        """Nothing to release: a connection handed to a client with XCLIENT stays in the pool
        for that client's next session (same address, name, HELO and login)."""

    async def xforward(
        self, conn: DownstreamConnection, session: Session, transaction: Transaction
    ) -> None:
        """Send XFORWARD when enabled and offered; a refusal is logged, the mail goes on."""
        offered = conn.extensions.get("xforward")
        if not self.settings.xforward or offered is None:
            return
        if conn.owner:
            offered = "IDENT" if "IDENT" in offered.upper().split() else ""
        for command in xforward_commands(offered, session, transaction):
            reply = await conn.command(command)
            if not reply.ok:
                log.warning("downstream refused XFORWARD", reply=reply.smtp_reply())
                return

    async def close(self) -> None:
        """QUIT the pooled connections (at shutdown)."""
        for pool in self.pools.values():
            pool.close()


class RelayTransaction:
    """One message on its way downstream (`mailgate.egress.DownstreamTransaction`)."""

    def __init__(
        self,
        egress: RelayEgress,
        conn: DownstreamConnection,
        sender: Address,
        pool: ConnectionPool | None = None,
    ) -> None:
        self._egress = egress
        self._pool = pool or egress.pool
        self._counted = True
        self._conn: DownstreamConnection | None = conn
        self._sender: _Key = _key(sender)
        self._accepted: set[_Key] = set()

    async def rcpt(self, recipient: Address) -> Reply:
        """RCPT TO downstream; its reply is the client's reply."""
        conn = self._conn
        if conn is None:
            return replies.lost("transaction already ended")
        try:
            reply = await conn.rcpt_to(recipient)
        except DownstreamError as exc:
            self._conn = None
            self._uncount()
            return exc.reply
        if reply.ok:
            self._accepted.add(_key(recipient))
        return reply

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._egress.open_transactions -= 1

    async def deliver(self, session: Session, transaction: Transaction) -> Reply:
        """Apply the final envelope, then send the message; the downstream's reply verbatim."""
        conn = self._conn
        self._conn = None
        self._uncount()
        if conn is None:
            return replies.lost("transaction already ended")
        try:
            reply, sent = await self._deliver(conn, session, transaction)
        except DownstreamError as exc:
            self._pool.discard(conn)
            return exc.reply
        except BaseException:
            self._pool.discard(conn)
            raise
        if sent and reply.code // 100 == 2:
            self._pool.release(conn)
        else:
            await self._reset(conn)
        return reply

    async def _deliver(
        self, conn: DownstreamConnection, session: Session, transaction: Transaction
    ) -> tuple[Reply, bool]:
        """The client's reply, and whether it is the downstream's own end-of-data reply."""
        message = transaction.message
        if message is None:
            return Reply(451, "4.3.0", "internal error: no message to relay"), False
        if not transaction.recipients:
            return Reply(250, "2.0.0", "Ok: discarded, no recipients left"), False
        refused = await self._apply_envelope(conn, session, transaction, message.size)
        if refused is not None:
            return refused, False
        return await conn.send_message(message), True

    async def _apply_envelope(
        self, conn: DownstreamConnection, session: Session, transaction: Transaction, size: int
    ) -> Reply | None:
        final = {_key(r): r for r in transaction.recipients}
        if _key(transaction.sender) != self._sender or not self._accepted <= final.keys():
            await self._reset_or_fail(conn)
            await self._egress.introduce(conn, session, transaction)
            mail = await conn.mail_from(transaction.sender, size)
            if not mail.ok:
                log.info("downstream refused the changed sender", reply=mail.smtp_reply())
                return replies.ENVELOPE_REFUSED
            pending = list(final.values())
        else:
            pending = [r for k, r in final.items() if k not in self._accepted]
        for recipient in pending:
            reply = await conn.rcpt_to(recipient)
            if not reply.ok:
                log.info(
                    "downstream refused an added recipient",
                    rcpt=recipient.address,
                    reply=reply.smtp_reply(),
                )
                return replies.ENVELOPE_REFUSED
        return None

    async def _reset_or_fail(self, conn: DownstreamConnection) -> None:
        if not await conn.reset():
            raise DownstreamError(replies.lost("RSET failed"))

    async def _reset(self, conn: DownstreamConnection) -> None:
        if await conn.reset():
            self._pool.release(conn)
        else:
            self._pool.discard(conn)

    async def abort(self) -> None:
        """The client gave up: RSET downstream and keep the connection if that worked."""
        conn = self._conn
        self._conn = None
        self._uncount()
        if conn is not None:
            await self._reset(conn)
