"""Building sessions, transactions and messages for relay tests."""

from __future__ import annotations

from collections.abc import Sequence

from mailgate.message import Message, new_spool, parse_header_block
from mailgate.relay import RelayEgress, RelaySettings
from mailgate.session import Address, Session, Transaction

HEADERS = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: relay test\r\n"


def settings_for(host: str, port: int, **overrides: object) -> RelaySettings:
    """RelaySettings pointing at a test peer, with short timeouts."""
    values: dict[str, object] = {
        "address": f"{host}:{port}",
        "helo_name": "relay.test",
        "connect_timeout": 5.0,
        "command_timeout": 5.0,
        "data_timeout": 10.0,
    }
    values.update(overrides)
    return RelaySettings(**values)  # type: ignore[arg-type]


def message(body: bytes = b"Hello\r\n", headers: bytes = HEADERS) -> Message:
    """A message with `headers` (CRLF lines, no blank line) and `body`."""
    spool = new_spool(threshold=1 << 16)
    spool.write(body)
    return Message(parse_header_block(headers), spool)


def transaction(
    sender: str = "a@example.com", rcpts: Sequence[str] = ("b@example.net",), **kw: object
) -> Transaction:
    """A transaction with accepted recipients (the message is attached later)."""
    return Transaction(Address(sender), [Address(r) for r in rcpts], **kw)  # type: ignore[arg-type]


def session() -> Session:
    """A session from a loopback client."""
    return Session("127.0.0.1", 40000, helo="client.test")


async def relay(
    egress: RelayEgress, tx: Transaction, msg: Message, sess: Session | None = None
) -> tuple[list[int], int]:
    """Run one whole transaction as the SMTP listener would; the MAIL/RCPT codes and the final
    code (0 if MAIL was refused)."""
    sess = sess or session()
    reply, dtx = await egress.begin(sess, tx)
    codes = [reply.code]
    if dtx is None:
        return codes, 0
    accepted = []
    for rcpt in tx.recipients:
        r = await dtx.rcpt(rcpt)
        codes.append(r.code)
        if r.ok:
            accepted.append(rcpt)
    tx.recipients = accepted
    tx.message = msg
    final = await dtx.deliver(sess, tx)
    return codes, final.code
