"""The one Authentication-Results header (RFC 8601) that mailgate writes for each message.

At the end of data the flow calls `apply_authentication_results`: the incoming headers that
claim our authserv-id are deleted (`forged`), and one header made from the results of the
authentication checks (`collect`) is inserted at the top (`header`), both through the
transaction's modifications, so the SMTP egress applies them and the milter listener sends
them to the MTA as actions. ``[authentication_results]`` in ``mailgate.toml`` configures it
(`AuthenticationResultsSettings`); ``docs/authentication-results.md`` is the user's page.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from typing import Literal

from mailgate import modifications as m
from mailgate.authentication_results import syntax
from mailgate.authentication_results.collect import results_of
from mailgate.authentication_results.forged import forged_headers
from mailgate.authentication_results.header import (
    ARC_HEADER,
    HEADER,
    AuthResult,
    checked_header_value,
    header_value,
)
from mailgate.logging import get_logger
from mailgate.session import Session, Transaction

__all__ = [
    "HEADER",
    "AuthResult",
    "AuthenticationResultsSettings",
    "apply_authentication_results",
    "forged_headers",
    "header_value",
    "results_of",
]

log = get_logger("mailgate.authentication_results")

ARC_RESULT_KEY = "arc"
"""`Transaction.results` key of the ARC check: ``pass`` there means the chain validated."""


@dataclass(slots=True)
class AuthenticationResultsSettings:
    """The ``[authentication_results]`` table."""

    header: bool = True
    """Add the header and remove the forged ones; false: leave Authentication-Results alone."""
    authserv_id: str = ""
    """The name this host signs its header with; empty: ``[mailgate] hostname``, else the FQDN."""
    remove: Literal["ours", "all"] = "ours"
    """Incoming Authentication-Results to remove: ``ours`` (those claiming our authserv-id)
    or ``all``."""

    def __post_init__(self) -> None:
        text = self.authserv_id
        if text and (syntax.clean(text) != text or text.strip() != text or '"' in text):
            raise ValueError(
                "authserv_id must be printable, without quotes or spaces at either end"
            )


def apply_authentication_results(
    session: Session, transaction: Transaction, settings: AuthenticationResultsSettings
) -> None:
    """Delete the incoming headers that claim our authserv-id, then insert ours at the top."""
    message = transaction.message
    if message is None or not settings.header:
        return
    authserv_id = settings.authserv_id or _fqdn()
    doomed = forged_headers(
        message.headers,
        authserv_id,
        remove_all=settings.remove == "all",
        arc_chain_valid=_arc_validated(transaction),
        added=_added_by_plugins(transaction),
    )
    for name, occurrence in doomed:
        transaction.delete_header(name, occurrence)
    if doomed:
        log.info("incoming Authentication-Results removed", count=len(doomed))
    value = checked_header_value(authserv_id, results_of(session, transaction))
    transaction.insert_header(0, HEADER, value)


def _arc_validated(transaction: Transaction) -> bool:
    arc = transaction.results.get(ARC_RESULT_KEY)
    return arc is not None and arc.result == "pass"


def _added_by_plugins(transaction: Transaction) -> set[str]:
    names = (HEADER.lower(), ARC_HEADER.lower())
    return {
        mod.value
        for mod in transaction.modifications
        if isinstance(mod, m.AddHeader | m.InsertHeader | m.ChangeHeader)
        and mod.name.strip().lower() in names
    }


@functools.cache
def _fqdn() -> str:
    return socket.getfqdn()
