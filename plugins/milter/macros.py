"""The macros the bridge sends each milter: Postfix's default lists, with this session's values."""

from __future__ import annotations

import mailgate
from mailgate.milter.codec import encode_macro
from mailgate.milter.protocol import Command, MacroStage
from mailgate.session import Address, Session, Transaction
from mailgate.verdict import Verdict

POSTFIX_DEFAULTS: dict[MacroStage, tuple[str, ...]] = {
    MacroStage.CONNECT: ("j", "{daemon_name}", "{daemon_addr}", "v", "_"),
    MacroStage.HELO: (
        "{tls_version}",
        "{cipher}",
        "{cipher_bits}",
        "{cert_subject}",
        "{cert_issuer}",
    ),
    MacroStage.ENVFROM: (
        "i",
        "{auth_type}",
        "{auth_authen}",
        "{auth_author}",
        "{mail_addr}",
        "{mail_host}",
        "{mail_mailer}",
    ),
    MacroStage.ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    MacroStage.DATA: ("i",),
    MacroStage.EOH: ("i",),
    MacroStage.EOM: ("i",),
}
"""What Postfix sends at each stage when a milter does not ask for its own list
(``milter_connect_macros`` ... ``milter_end_of_data_macros``)."""

STAGE_OF: dict[Command, MacroStage] = {
    Command.CONNECT: MacroStage.CONNECT,
    Command.HELO: MacroStage.HELO,
    Command.MAIL: MacroStage.ENVFROM,
    Command.RCPT: MacroStage.ENVRCPT,
    Command.DATA: MacroStage.DATA,
    Command.EOH: MacroStage.EOH,
    Command.BODYEOB: MacroStage.EOM,
}
"""The macro stage each command's MACRO frame belongs to."""

_PASSED_THROUGH = frozenset(
    {"j", "_", "daemon_name", "daemon_addr", "daemon_port", "v", "client_ptr", "client_resolve"}
    | {"tls_version", "cipher", "cipher_bits", "cert_subject", "cert_issuer", "auth_type"}
    | {"auth_author"}
)
"""Session-wide macros taken as the upstream MTA gave them (milter listener ingress)."""


def _brace(name: str) -> str:
    return name if len(name) == 1 else "{" + name + "}"


def session_values(session: Session, hostname: str) -> dict[str, str]:
    """The session-wide macro values (names as on the wire: ``j``, ``{client_addr}``)."""
    client_name = session.client_name or "unknown"
    values = {
        "j": hostname,
        "{daemon_name}": session.listener,
        "v": f"mailgate {mailgate.__version__}",
        "_": f"{client_name} [{session.client_ip}]",
        "{client_addr}": session.client_ip,
        "{client_port}": str(session.client_port),
        "{client_name}": client_name,
        "{client_ptr}": client_name,
    }
    if session.tls:
        values["{tls_version}"] = session.tls_version
        values["{cipher}"] = session.tls_cipher
    if session.auth_login:
        values["{auth_authen}"] = session.auth_login
    for name, value in session.macros.items():
        if name in _PASSED_THROUGH:
            values[_brace(name)] = value
    return values


def transaction_values(
    transaction: Transaction | None, recipient: Address | None = None
) -> dict[str, str]:
    """The macro values of a transaction (and of one recipient, at RCPT)."""
    if transaction is None:
        return {}
    values = {
        "i": transaction.queue_id or transaction.id,
        "{mail_addr}": transaction.sender.address,
    }
    if recipient is not None:
        values["{rcpt_addr}"] = recipient.address
    return values


def macro_pairs(names: tuple[str, ...], values: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    """The name/value pairs to send for `names`; names without a value are left out, as
    Postfix does."""
    pairs = []
    for name in names:
        value = values.get(name)
        if value is None and len(name) > 2 and not name.startswith("{"):
            value = values.get("{" + name + "}")
        if value:
            pairs.append((name.encode(), value.encode("utf-8", "surrogateescape")))
    return tuple(pairs)


def macro_frame(code: bytes, names: tuple[str, ...], values: dict[str, str]) -> bytes | None:
    """The encoded MACRO frame for command `code` with `names` (as `macro_pairs` picks them);
    None when no name has a value."""
    pairs = macro_pairs(names, values)
    return encode_macro(code, pairs) if pairs else None


def refused_values(verdict: Verdict) -> dict[str, str]:
    """The RCPT macros of a refused recipient, as Postfix sends them to a milter that asked
    for refused recipients (``SMFIP_RCPT_REJ``): ``{rcpt_mailer}`` = ``error``, the enhanced
    status as ``{rcpt_host}``, the reply text as ``{rcpt_addr}``."""
    return {
        "{rcpt_mailer}": "error",
        "{rcpt_host}": verdict.status or f"{str(verdict.code)[0]}.0.0",
        "{rcpt_addr}": verdict.text.split("\n")[0],
    }
