"""What a trial starts from: the message, its envelope, the pretend client, the limits."""

from __future__ import annotations

import email.utils
import ipaddress
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mailgate.config.dynamic import Dynamic
from mailgate.egress import Reply
from mailgate.loader import Config
from mailgate.message import parse_header_block
from mailgate.smtp import replies
from mailgate.smtp.commands import parse_path
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.syntax import valid_utf8

Ingress = Literal["smtp", "milter"]
LISTENER_NAME = "try"
"""``session.listener`` (``listener`` in expressions) during a trial."""

EXIT_ACCEPTED = 0
"""Accepted, discarded or quarantined: the client hears a 2xx."""
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 4
EXIT_REJECT = 5

TLS_VERSION = "TLSv1.3"
TLS_CIPHER = "TLS_AES_256_GCM_SHA384"
UNLIMITED = 1 << 62
CHUNK = 1 << 16
_BARE_LINE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class UsageError(Exception):
    """The command line or the message cannot make a trial (exit status 2)."""


@dataclass(slots=True)
class Client:
    """The connection the trial pretends to come from."""

    ip: str = "127.0.0.1"
    helo: str = "localhost"
    auth_login: str = ""
    tls: bool = False
    ingress: Ingress = "smtp"


@dataclass(slots=True)
class Envelope:
    """Sender and recipients, and where each came from (an option or a header)."""

    sender: str
    recipients: list[str]
    sender_from: str = "--from"
    recipients_from: str = "--rcpt"


@dataclass(slots=True)
class Limits:
    """What the ingress would check and add: taken from the configured listener."""

    hostname: str
    listener: SmtpListenerSettings
    relay: str
    quarantine: str
    """Where a held message would go, as a person reads it."""


def read_message(source: str) -> bytes:
    """The message in file `source` (``-``: standard input), in SMTP's CRLF form.

    A file on disk usually has LF line ends; each becomes CRLF, as a mail client would send
    it. A bare CR is left alone, so the listener's own rule for it applies.
    """
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    return as_crlf(raw)


def as_crlf(raw: bytes) -> bytes:
    """`raw` with each LF line end made CRLF, and a final CRLF if the last line had none. A
    bare CR is left alone, so the listener's own rule for it applies."""
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return crlf if not crlf or crlf.endswith(b"\r\n") else crlf + b"\r\n"


def header_addresses(raw: bytes, *names: str) -> list[str]:
    """The addresses in the message's headers `names` (``From``, ``To``, ``Cc``), in order."""
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    wanted = {n.lower() for n in names}
    values = [h.value for h in parse_header_block(head) if h.name.strip().lower() in wanted]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def envelope(raw: bytes, sender: str | None, recipients: list[str]) -> Envelope:
    """The envelope: the options where given, else the From and To/Cc headers."""
    env = Envelope(sender or "", list(recipients))
    if sender is None:
        found = header_addresses(raw, "From")
        if not found:
            raise UsageError("no --from and no From: header to take the sender from")
        env.sender, env.sender_from = found[0], "From header"
    if not recipients:
        env.recipients = header_addresses(raw, "To", "Cc")
        env.recipients_from = "To/Cc headers"
        if not env.recipients:
            raise UsageError("no --rcpt and no To: or Cc: header to take recipients from")
    check_envelope(env)
    return env


def check_envelope(env: Envelope) -> None:
    """Refuse, as the listener would at MAIL and RCPT, an address it would not take.

    The reply the listener would give is in the message, so ``--rcpt 'not an address'``
    reads as the client would see it, not as a recipient that passed.
    """
    for option, address in [(env.sender_from, env.sender)] + [
        (env.recipients_from, r) for r in env.recipients
    ]:
        reply = address_problem(address, sender=option == env.sender_from)
        if reply is not None:
            raise UsageError(
                f"{option} {address!r}: the listener would answer {reply.smtp_reply()}"
            )


def address_problem(address: str, *, sender: bool) -> Reply | None:
    """The listener's reply to ``MAIL FROM:<address>`` / ``RCPT TO:<address>`` when it is
    malformed; None when the listener takes it (plugins may still refuse it)."""
    parsed = parse_path(f"<{address}>")
    if parsed is None or parsed[1] or (not sender and not parsed[0]):
        return replies.SYNTAX
    if not valid_utf8(parsed[0]):
        return replies.BAD_ADDRESS
    return None


def check_client(ip: str) -> str:
    """`ip` as the listener would see it: an IPv4 or IPv6 address (else `UsageError`)."""
    try:
        return str(ipaddress.ip_address(ip.strip("[]")))
    except ValueError:
        raise UsageError(f"--client {ip!r}: not an IP address (such as 192.0.2.1)") from None


def first_bare_line_ending(raw: bytes) -> int | None:
    """The number (from 1) of the first line of `raw` that has a CR or LF not in a CRLF."""
    found = _BARE_LINE_ENDING.search(raw)
    return None if found is None else raw.count(b"\r\n", 0, found.start()) + 1


def limits(config: Config, ingress: Ingress) -> Limits:
    """The first listener's settings (of the `ingress` type, when there is one) and the relay."""
    smtp = next((lc.settings for lc in config.listeners if lc.type == "smtp"), None)
    settings = smtp if isinstance(smtp, SmtpListenerSettings) else SmtpListenerSettings()
    if ingress == "milter":
        # Postfix enforces its own limits before a milter sees anything.
        settings = SmtpListenerSettings(
            max_message_size=Dynamic.fixed(UNLIMITED),
            max_line_length=UNLIMITED,
            max_header_size=UNLIMITED,
            max_recipients=Dynamic.fixed(UNLIMITED),
            bare_line_endings="normalize",
            add_received=False,
            max_received=0,
        )
    hostname = settings.hostname or config.mailgate.hostname or socket.getfqdn()
    if config.quarantine.backend == "directory":
        held = config.relay.quarantine_dir
    else:
        held = f"the quarantine in the store ({config.store.redacted()})"
    return Limits(hostname, settings, config.relay.address.default, held)
