"""Turning the downstream's responses into `Reply` records, and the replies the relay makes up."""

from __future__ import annotations

import re

from aiosmtplib.response import SMTPResponse

from mailgate.egress import Reply

_STATUS = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?: |$)")


def reply_from_response(response: SMTPResponse) -> Reply:
    """The downstream's reply as is: code, enhanced status (if it sent one) and text lines."""
    lines = response.message.split("\n")
    match = _STATUS.match(lines[0])
    if match is None:
        return Reply(response.code, "", response.message)
    status = match.group(1)
    cut = len(status)
    text = [ln[cut:].lstrip(" ") if ln.startswith(status) else ln for ln in lines]
    return Reply(response.code, status, "\n".join(text))


def unreachable(reason: str) -> Reply:
    """The downstream could not be reached or refused the connection (`reason` is logged,
    the client gets a plain text)."""
    return Reply(451, "4.4.1", "Downstream unavailable, try again later", failure=reason)


def lost(reason: str) -> Reply:
    """The downstream went away or timed out in the middle of a transaction."""
    return Reply(451, "4.4.2", "Downstream connection lost, try again later", failure=reason)


TOO_MANY_TRANSACTIONS = Reply(451, "4.3.2", "Too many transactions in progress, try again later")
"""`RelaySettings.max_transactions` downstream transactions are open already."""

ENVELOPE_REFUSED = Reply(451, "4.3.0", "downstream refused the changed envelope; try again later")
"""The downstream refused part of an envelope the plugins changed: never a partial delivery."""
