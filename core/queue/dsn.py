"""Delivery status notifications (RFC 3464): the report sent back to a message's sender.

`build_report` turns what became of some recipients of one queued message into a complete
message, ready to be queued with the null sender:

- ``multipart/report; report-type=delivery-status`` with three parts: a human-readable
  ``text/plain``; the ``message/delivery-status`` fields (per message: ``Reporting-MTA``,
  ``Original-Envelope-Id``, ``Arrival-Date``; per recipient: ``Original-Recipient``,
  ``Final-Recipient``, ``Action``, ``Status``, ``Remote-MTA``, ``Diagnostic-Code``,
  ``Last-Attempt-Date``, ``Will-Retry-Until``); and the original message
  (``message/rfc822``) or only its header block (``text/rfc822-headers``).
- RFC 3461's envelope parameters decide the rest: ``RET=HDRS`` or ``FULL`` (failures only;
  delay and success reports return the headers), ``ENVID=`` and ``ORCPT=`` (given back
  xtext-decoded), ``NOTIFY=`` (`wants`: which events a recipient is told about).
"""

from __future__ import annotations

import enum
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailgate.session import Address


class Action(enum.StrEnum):
    """A recipient's ``Action`` (RFC 3464 section 2.3.3)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


class Event(enum.StrEnum):
    """What a sender can ask to be told about (``NOTIFY=``); stored as `recipients.notified`
    once the report for it is queued."""

    FAILURE = "failure"
    DELAY = "delay"
    SUCCESS = "success"


def notify_words(params: Sequence[str]) -> frozenset[str] | None:
    """The ``NOTIFY=`` words of a recipient's RCPT parameters (upper case); None without one."""
    for param in params:
        key, _, value = param.partition("=")
        if key.upper() == "NOTIFY":
            return frozenset(w.strip().upper() for w in value.split(","))
    return None


def wants(params: Sequence[str], event: Event) -> bool:
    """True when the recipient's ``NOTIFY=`` asks for a report of `event`; without
    ``NOTIFY=``, failures and delays are reported (RFC 3461 section 4.1), not successes."""
    words = notify_words(params)
    if words is None:
        return event is not Event.SUCCESS
    return event.value.upper() in words


def param(params: Sequence[str], name: str) -> str | None:
    """The value of ESMTP parameter `name` (upper case) in `params`, or None."""
    for item in params:
        key, _, value = item.partition("=")
        if key.upper() == name:
            return value
    return None


_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext decoded (``+2B`` is ``+``); `value` as given if the result would not be
    printable ASCII (it then could not be written into a report field)."""
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    return decoded if _printable(decoded) else value


def _printable(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


_MAX_FIELD = 900
"""Characters of a field value at most: folded or not, a line stays under 998."""


def _clean(text: str) -> str:
    """`text` as one line of printable ASCII (a reply may carry anything), not too long."""
    line = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    return line[:_MAX_FIELD]


def utf8_addr_xtext(address: str) -> str:
    """An address for an ``utf-8`` address-type field (RFC 6533 section 3): non-ASCII
    characters, controls, ``\\``, ``+`` and ``=`` as ``\\x{HEX}``."""
    return "".join(
        c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):X}}}" for c in address
    )


def address_field(address: str) -> str:
    """``rfc822; address``, or ``utf-8; ...`` for an internationalized address."""
    if address.isascii() and _printable(address):
        return f"rfc822; {address}"
    return f"utf-8; {utf8_addr_xtext(address)}"


def envelope_id(envid: str) -> str:
    """The ``Original-Envelope-Id`` value for ``ENVID=xtext``: decoded, unless the decoded
    text would not survive a header field (blank, or with spaces at its ends): then as sent."""
    decoded = xtext_decode(envid)
    return decoded if decoded == decoded.strip() != "" else envid


def original_recipient(orcpt: str) -> str:
    """The ``Original-Recipient`` value for ``ORCPT=type;xtext`` (decoded when rfc822)."""
    kind, _, address = orcpt.partition(";")
    if kind.lower() == "utf-8":
        return f"utf-8; {address}"
    decoded = xtext_decode(address)
    plain = decoded.isascii() and _printable(decoded) and decoded == decoded.strip() != ""
    if kind.lower() == "rfc822" and not plain:
        # Spaces or control characters would not survive a header field: kept encoded.
        return f"utf-8; {utf8_addr_xtext(decoded)}"
    return f"{kind}; {decoded}"


def rfc5322_date(timestamp: float) -> str:
    """`timestamp` as an RFC 5322 date, in UTC."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0))


@dataclass(frozen=True, slots=True)
class ReportedRecipient:
    """One recipient in a report."""

    address: Address
    """The recipient as it was given to the next hop, with its RCPT parameters."""
    action: Action
    status: str
    """The enhanced status code (``5.1.1``)."""
    diagnostic: str = ""
    """What happened, as a ``Diagnostic-Code`` value: ``smtp; 550 5.1.1 ...`` for a reply of
    the remote MTA, ``X-mailgate; ...`` for what mailgate found itself; "" for none."""
    remote_mta: str = ""
    """The host that gave the reply; "" when no remote MTA answered."""
    last_attempt: float | None = None
    will_retry_until: float | None = None
    """For ``delayed``: when the queue gives up (the message's expiry)."""
    expired: bool = False
    """A failure because the message stayed in the queue longer than ``max_age``."""


@dataclass(frozen=True, slots=True)
class ReportedMessage:
    """The message a report is about: its envelope and content as queued."""

    queue_id: str
    sender: Address
    """The reverse path, with MAIL FROM's parameters (``RET=``, ``ENVID=``)."""
    arrival: float
    content: bytes
    header_size: int
    """Bytes of `content` before the body, the empty line included."""


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """What every report of a node shares."""

    hostname: str
    """``Reporting-MTA``, and the domain of ``From: MAILER-DAEMON@``."""
    default_return: str = "full"
    """What a failure report returns without ``RET=``: ``full`` or ``headers``."""
    max_return: int = 100_000
    """Bytes of the original message returned at most; more: its headers only."""


_SUBJECTS = {
    Action.FAILED: "Undelivered mail returned to sender",
    Action.DELAYED: "Delivery delayed: your message is still being retried",
    Action.DELIVERED: "Delivery report: your message was delivered",
    Action.RELAYED: "Delivery report: your message was relayed",
}

_INTRODUCTIONS = {
    Action.FAILED: (
        "Your message could not be delivered to the recipients listed below, and "
        "will not be tried again. Each line gives a recipient and the reason."
    ),
    Action.DELAYED: (
        "Your message has not been delivered yet to the recipients listed below. "
        "The mail system keeps trying; there is no need to send it again. You will "
        "be told if it still cannot be delivered when the retrying ends."
    ),
    Action.DELIVERED: "Your message was delivered to the recipients listed below.",
    Action.RELAYED: (
        "Your message was passed on to the recipients listed below. The next mail "
        "system does not send delivery reports, so this is the last report you will "
        "get about these recipients from here."
    ),
}


def build_report(
    message: ReportedMessage,
    recipients: Sequence[ReportedRecipient],
    settings: ReportSettings,
    *,
    dsn_id: str,
    now: float,
) -> tuple[bytes, int]:
    """The report on `recipients` (all with the same `Action`) of `message`, as a complete
    message with CRLF line ends; and the size of its header block (the empty line included).
    `dsn_id` is the report's own queue id (its ``Message-ID``)."""
    if not recipients:
        raise ValueError("a report needs at least one recipient")
    action = recipients[0].action
    boundary = f"{dsn_id}.{secrets.token_hex(6)}/{settings.hostname}"
    returned = _returned_part(message, action, settings)
    human = _human_part(message, recipients, settings, returned.headers_only_reason)
    status = _status_part(message, recipients, settings)
    parts = [human, status, returned.part]
    eight_bit = any(not p.isascii() for p in parts)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{settings.hostname}>",
        f"To: <{message.sender.address}>",
        f"Subject: {_SUBJECTS[action]}",
        f"Date: {rfc5322_date(now)}",
        f"Message-ID: <{dsn_id}@{settings.hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]
    if eight_bit:
        head.append("Content-Transfer-Encoding: 8bit")
    header_block = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8")
    body = b"This is a MIME-encapsulated delivery status notification (RFC 3464).\r\n"
    for part in parts:
        body += f"\r\n--{boundary}\r\n".encode() + part
    body += f"\r\n--{boundary}--\r\n".encode()
    return header_block + body, len(header_block)


def _human_part(
    message: ReportedMessage,
    recipients: Sequence[ReportedRecipient],
    settings: ReportSettings,
    headers_only_reason: str,
) -> bytes:
    action = recipients[0].action
    lines = [f"This is the mail system at {settings.hostname}.", ""]
    lines += textwrap.wrap(_INTRODUCTIONS[action], 72)
    lines.append("")
    for r in recipients:
        what = _diagnostic_text(r)
        if r.expired:
            what = f"delivery time expired; the last attempt got: {what}"
        elif r.action is Action.DELAYED and r.will_retry_until is not None:
            what = f"{what} (retried until {rfc5322_date(r.will_retry_until)})"
        elif r.action in (Action.RELAYED, Action.DELIVERED):
            what = f"{r.action.value} to {r.remote_mta or 'the next hop'}: {what}"
        lines += textwrap.wrap(
            f"<{_clean(r.address.address)}>: {what}", 76, subsequent_indent="    "
        ) or [f"<{_clean(r.address.address)}>"]
    lines.append("")
    lines.append(f"Queue id: {message.queue_id}, received {rfc5322_date(message.arrival)}.")
    if headers_only_reason:
        lines += textwrap.wrap(headers_only_reason, 76)
    text = "\r\n".join(lines) + "\r\n"
    return (
        b"Content-Description: Notification\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text.encode("ascii", "replace")
    )


def _diagnostic_text(r: ReportedRecipient) -> str:
    return r.diagnostic.partition(";")[2].strip() if r.diagnostic else "no details"


def _status_part(
    message: ReportedMessage, recipients: Sequence[ReportedRecipient], settings: ReportSettings
) -> bytes:
    fields = [("Reporting-MTA", f"dns; {settings.hostname}")]
    fields.append(("X-Mailgate-Queue-ID", message.queue_id))
    envid = param(message.sender.params, "ENVID")
    if envid:
        fields.append(("Original-Envelope-Id", envelope_id(envid)))
    if message.sender.address:
        fields.append(("X-Mailgate-Sender", address_field(message.sender.address)))
    fields.append(("Arrival-Date", rfc5322_date(message.arrival)))
    all_rcpt_fields: list[list[tuple[str, str]]] = []
    for r in recipients:
        rf: list[tuple[str, str]] = []
        orcpt = param(r.address.params, "ORCPT")
        if orcpt:
            rf.append(("Original-Recipient", original_recipient(orcpt)))
        rf.append(("Final-Recipient", address_field(r.address.address)))
        rf.append(("Action", r.action.value))
        rf.append(("Status", r.status))
        if r.remote_mta:
            rf.append(("Remote-MTA", f"dns; {_clean(mta_host(r.remote_mta))}"))
        if r.diagnostic:
            kind, _, text = r.diagnostic.partition(";")
            rf.append(("Diagnostic-Code", f"{kind}; {_clean(text)}"))
        if r.last_attempt is not None:
            rf.append(("Last-Attempt-Date", rfc5322_date(r.last_attempt)))
        if r.will_retry_until is not None:
            rf.append(("Will-Retry-Until", rfc5322_date(r.will_retry_until)))
        all_rcpt_fields.append(rf)
    blocks = [_fields(fields), *(_fields(rf) for rf in all_rcpt_fields)]
    # RFC 6533: the utf-8 address type belongs in a message/global-delivery-status.
    utf8 = any(
        value.startswith("utf-8;") for block in (fields, *all_rcpt_fields) for _, value in block
    )
    kind = "message/global-delivery-status" if utf8 else "message/delivery-status"
    text = "\r\n".join(blocks)
    head = f"Content-Description: Delivery report\r\nContent-Type: {kind}\r\n"
    if not text.isascii():
        head += "Content-Transfer-Encoding: 8bit\r\n"
    return (head + "\r\n" + text).encode("utf-8")


def _fields(fields: Sequence[tuple[str, str]]) -> str:
    """Header-style fields, folded at spaces to keep lines under 78 characters."""
    out = []
    for name, value in fields:
        lines = textwrap.wrap(
            f"{name}: {value}",
            78,
            subsequent_indent=" ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        if len(lines) > 1 and lines[0] == f"{name}:":
            # A value too long for the first line still starts there: a field whose first
            # line is only its name is read with a leading space by some parsers.
            lines[0:2] = [f"{name}: {lines[1].lstrip()}"]
        out.append("\r\n".join(lines))
    return "".join(line + "\r\n" for line in out)


@dataclass(frozen=True, slots=True)
class _Returned:
    part: bytes
    headers_only_reason: str


def _returned_part(message: ReportedMessage, action: Action, settings: ReportSettings) -> _Returned:
    ret = (param(message.sender.params, "RET") or "").upper()
    full = action is Action.FAILED and (
        ret == "FULL" or (not ret and settings.default_return == "full")
    )
    reason = ""
    if full and len(message.content) > settings.max_return:
        full = False
        reason = (
            f"The message ({len(message.content)} bytes) is larger than the "
            f"{settings.max_return} bytes returned at most: only its headers are attached."
        )
    if full:
        content, kind = message.content, "message/rfc822"
    else:
        content = message.content[: max(message.header_size - 2, 0)] + b"\r\n"
        kind = "text/rfc822-headers"
    encoding = "7bit" if content.isascii() else "8bit"
    head = (
        f"Content-Description: {'Undelivered message' if full else 'Message headers'}\r\n"
        f"Content-Type: {kind}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode()
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return _Returned(head + content, reason)


def mta_host(remote: str) -> str:
    """The next hop's name as a DSN's ``Remote-MTA`` gives it (RFC 3464 2.3.5): the
    recorded ``mx1.example.com[192.0.2.1]:25`` or ``127.0.0.1:2525`` without the address
    in brackets and the port."""
    name, _, port = remote.rpartition(":")
    if not (port.isdigit() and name):
        name = remote
    if name.startswith("[") and name.endswith("]"):
        return name[1:-1]
    return name.partition("[")[0] or name
