"""Test messages for the scanner plugins, and a way to run one through a real Pipeline."""

from __future__ import annotations

import base64
import io
import zipfile

from mailgate import Address, Message, Session, Transaction, Verdict
from mailgate.message import new_spool, parse_header_block
from mailgate.pipeline import EnabledPlugin, ErrorPolicy, Pipeline
from tests.peers.clamd import EICAR
from tests.peers.spamd import GTUBE

HEADERS = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Hello\r\n"
    b"Date: Thu, 26 Nov 2026 01:00:00 +0000\r\n"
    b"Message-ID: <test-1@example.com>\r\n"
)


def crlf(text: bytes) -> bytes:
    """Normalise line endings to CRLF, as the SMTP listener hands messages over."""
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def plain(body: bytes, extra_headers: bytes = b"") -> bytes:
    """A text/plain message with `body`."""
    return HEADERS + extra_headers + b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" + body


def with_attachment(name: str, content: bytes, mime_type: str) -> bytes:
    """A multipart message with one base64 attachment."""
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return (
        HEADERS
        + crlf(
            b"MIME-Version: 1.0\n"
            b'Content-Type: multipart/mixed; boundary="XX"\n\n'
            b"--XX\nContent-Type: text/plain\n\nSee attached.\n"
            b"--XX\n"
            b"Content-Type: " + mime_type.encode() + b'; name="' + name.encode() + b'"\n'
            b"Content-Transfer-Encoding: base64\n"
            b'Content-Disposition: attachment; filename="' + name.encode() + b'"\n\n'
        )
        + encoded
        + b"--XX--\r\n"
    )


def zipped(name: str, content: bytes) -> bytes:
    """A zip archive holding one file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, content)
    return buf.getvalue()


def ham() -> bytes:
    """An ordinary, clean message."""
    return plain(b"Hi Bob,\r\n\r\nThe meeting is at ten tomorrow.\r\n\r\nAlice\r\n")


def eicar_inline() -> bytes:
    """EICAR pasted into a text body."""
    return plain(b"Look at this:\r\n" + EICAR + b"\r\n")


def gtube() -> bytes:
    """A message SpamAssassin scores 1000."""
    return plain(b"Buy now!\r\n" + GTUBE + b"\r\n")


def padded(size: int) -> bytes:
    """A clean message of about `size` bytes."""
    line = b"The quick brown fox jumps over the lazy dog. " * 2 + b"\r\n"
    return plain(line * (size // len(line) + 1))


def make_message(raw: bytes, spool_threshold: int = 1 << 20) -> Message:
    """Split `raw` (CRLF lines) into headers and a spooled body, as the SMTP listener does."""
    head, _, body = raw.partition(b"\r\n\r\n")
    spool = new_spool(spool_threshold)
    spool.write(body)
    return Message(parse_header_block(head + b"\r\n"), spool)


def make_transaction(raw: bytes) -> tuple[Session, Transaction]:
    """A session and a transaction holding `raw` as their message."""
    session = Session("192.0.2.1", 40000)
    tx = Transaction(Address("alice@example.com"), [Address("bob@example.net")])
    tx.message = make_message(raw)
    return session, tx


def enabled(
    name: str,
    plugin: object,
    *,
    on_error: ErrorPolicy = ErrorPolicy.TEMPFAIL,
    timeout: float = 30.0,
) -> EnabledPlugin:
    """A plugin as a conf.d file would enable it (concurrent, as the scanners declare)."""
    return EnabledPlugin(
        name,
        plugin,
        timeout=timeout,
        on_error=on_error,
        concurrent=bool(getattr(plugin, "concurrent", False)),
    )


async def run(raw: bytes, *plugins: EnabledPlugin) -> tuple[Verdict | None, Transaction]:
    """Run `raw` through a pipeline of `plugins` at the end of data."""
    session, tx = make_transaction(raw)
    verdict = await Pipeline(list(plugins)).message(session, tx)
    return verdict, tx


def message_bytes(tx: Transaction) -> bytes:
    """The message as it would leave, after the plugins' changes."""
    assert tx.message is not None
    return b"".join(tx.message.iter_bytes())
