"""Sessions, transactions and messages built by hand, for calling a plugin's hook directly."""

from __future__ import annotations

from collections.abc import Iterable
from io import BytesIO

from mailgate.message import Message, parse_header_block
from mailgate.session import Address, Session, Transaction
from mailgate.trial.inputs import as_crlf


def make_session(
    client_ip: str = "192.0.2.1",
    *,
    helo: str = "client.example",
    client_name: str = "",
    auth_login: str = "",
    tls: bool = False,
    listener: str = "smtp",
    ingress: str = "smtp",
) -> Session:
    """A session as the listener would have it after HELO (and AUTH, with `auth_login`)."""
    return Session(
        client_ip,
        client_port=40000,
        client_name=client_name,
        listener=listener,
        ingress=ingress,
        helo=helo,
        tls=tls,
        tls_version="TLSv1.3" if tls else "",
        auth_login=auth_login,
    )


def make_transaction(
    sender: str = "alice@example.com",
    recipients: Iterable[str] = ("bob@example.org",),
    *,
    message: Message | bytes | str | None = None,
) -> Transaction:
    """A transaction with its envelope (and its message, for `on_message`)."""
    tx = Transaction(Address(sender), [Address(r) for r in recipients])
    if message is not None:
        tx.message = message if isinstance(message, Message) else make_message(message)
    return tx


def make_message(raw: bytes | str) -> Message:
    """A `Message` from its text; LF line ends become CRLF, as a mail client sends them."""
    data = as_crlf(raw.encode() if isinstance(raw, str) else raw)
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        head, body = data.removesuffix(b"\r\n"), b""
    return Message(parse_header_block(head + b"\r\n" if head else b""), BytesIO(body))
