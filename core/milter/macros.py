"""Postfix's milter macros become session and transaction fields."""

from __future__ import annotations

from collections.abc import Mapping

from mailgate.milter.codec import Connect
from mailgate.session import Session, Transaction
from mailgate.syntax import ascii_port
from mailgate.verdict import Verdict


def macro_name(raw: bytes) -> str:
    """``{auth_authen}`` -> ``auth_authen``; one-letter names (``i``, ``j``) stay as they are."""
    name = _names.get(raw)
    if name is None:
        name = raw.decode("utf-8", "surrogateescape")
        if name.startswith("{") and name.endswith("}"):
            name = name[1:-1]
        if len(_names) < _NAMES_KEPT and len(raw) <= 64:
            _names[raw] = name
    return name


_NAMES_KEPT = 256
_names: dict[bytes, str] = {}
"""Macro names as decoded: the MTA uses the same few dozen on every connection."""


def decode_macros(pairs: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    """Macro name/value pairs from the wire as a dict with names without braces."""
    return {macro_name(k): v.decode("utf-8", "surrogateescape") for k, v in pairs}


def _ip(address: str) -> str:
    return address[5:] if address.lower().startswith("ipv6:") else address


def new_session(connect: Connect, macros: Mapping[str, str], listener: str) -> Session:
    """The session for a CONNECT, its facts taken from the frame and the connect macros."""
    address = connect.address.decode("ascii", "replace")
    name = connect.hostname.decode("utf-8", "surrogateescape")
    if connect.family not in (b"4", b"6"):
        address = macros.get("client_addr", "")
    if name.startswith("[") or name == "unknown":
        name = ""
    port = connect.port if connect.family in (b"4", b"6") else 0
    if not port:
        port = ascii_port(macros.get("client_port", "")) or 0
    session = Session(client_ip=_ip(address), client_port=port, client_name=name, listener=listener)
    session.ingress = "milter"
    update_session(session, macros)
    return session


def update_session(session: Session, macros: Mapping[str, str]) -> None:
    """Take newly received macros into the session: TLS, authenticated login, the rest as-is."""
    session.macros.update(macros)
    if macros.get("tls_version"):
        session.tls = True
        session.tls_version = macros["tls_version"]
        session.tls_cipher = macros.get("cipher", session.tls_cipher)
    if macros.get("auth_authen"):
        session.auth_login = macros["auth_authen"]


def update_transaction(transaction: Transaction, macros: Mapping[str, str]) -> None:
    """Take the queue id (macro ``i``) into the transaction once Postfix has one."""
    if macros.get("i"):
        transaction.queue_id = macros["i"]


def refused_by_mta(macros: Mapping[str, str]) -> Verdict | None:
    """The MTA's own refusal of the recipient these RCPT macros describe, or None.

    With ``SMFIP_RCPT_REJ`` Postfix also sends the recipients it refused, with
    ``{rcpt_mailer}`` = ``error``, the enhanced status in ``{rcpt_host}`` and the rest of its
    reply (``<bob@example.org>: Relay access denied``) in ``{rcpt_addr}``. The three-digit code
    is not sent: 550 or 450 stands for its class.
    """
    if macros.get("rcpt_mailer") != "error":
        return None
    status = macros.get("rcpt_host", "")
    text = macros.get("rcpt_addr") or None
    if status.startswith("4"):
        return Verdict.tempfail(450, status, text, reason="refused by the MTA")
    return Verdict.reject(
        550, status if status.startswith("5") else "", text, reason="refused by the MTA"
    )
