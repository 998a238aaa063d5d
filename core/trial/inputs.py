"""What a trial starts from: the message, its envelope, the pretend client, the limits."""

from __future__ import annotations

import email.utils
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mailgate.loader import Config
from mailgate.message import parse_header_block
from mailgate.smtp.settings import SmtpListenerSettings

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
    quarantine_dir: str


def read_message(source: str) -> bytes:
    """The message in file `source` (``-``: standard input), in SMTP's CRLF form.

    A file on disk usually has LF line ends; each becomes CRLF, as a mail client would send
    it. A bare CR is left alone, so the listener's own rule for it applies.
    """
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
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
    return env


def limits(config: Config, ingress: Ingress) -> Limits:
    """The first listener's settings (of the `ingress` type, when there is one) and the relay."""
    smtp = next((lc.settings for lc in config.listeners if lc.type == "smtp"), None)
    settings = smtp if isinstance(smtp, SmtpListenerSettings) else SmtpListenerSettings()
    if ingress == "milter":
        # Postfix enforces its own limits before a milter sees anything.
        settings = SmtpListenerSettings(
            max_message_size=UNLIMITED,
            max_line_length=UNLIMITED,
            max_header_size=UNLIMITED,
            max_recipients=UNLIMITED,
            bare_line_endings="normalize",
            add_received=False,
            max_received=0,
        )
    hostname = settings.hostname or config.mailgate.hostname or socket.getfqdn()
    return Limits(hostname, settings, config.relay.address, config.relay.quarantine_dir)
