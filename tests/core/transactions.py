"""A small transaction for the dispatcher's tests: a sender and a two-line message."""

from __future__ import annotations

from mailgate import Address, Transaction
from mailgate.message import Message, new_spool, parse_header_block


def small_transaction() -> Transaction:
    """From alice@example.com, with ``Subject: hi`` and the body ``body``."""
    tx = Transaction(Address("alice@example.com"))
    spool = new_spool()
    spool.write(b"body\r\n")
    tx.message = Message(parse_header_block(b"Subject: hi\r\n"), spool)
    return tx
