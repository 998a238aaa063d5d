"""Inbound BDAT (RFC 3030 CHUNKING) with raw clients: every DATA limit holds, every chunk's
bytes are read whatever the answer (so the session stays in sync and nothing in a chunk runs
as a command), and the message relays byte for byte."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.message import Header
from mailgate.plugin import hookimpl
from mailgate.session import Transaction
from mailgate.verdict import Verdict
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import RecordingEgress, codes, raw_session, untraced
from tests.smtp.test_spooling import MIB, big_message, peak_rss

ENVELOPE = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
SMUGGLED = b"RSET\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
# Lines DATA would stuff or end on, a fake end of data, commands, 8-bit text: all plain bytes.
MESSAGE = (
    b"From: a@example.com\r\nSubject: chunks\r\n\r\n"
    b".leading dot\r\n..two dots\r\n.\r\n" + SMUGGLED + b"caf\xc3\xa9\r\nlast line\r\n"
)


def bdat(data: bytes, *, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def chunks(data: bytes, size: int) -> bytes:
    """`data` as pipelined BDAT commands of `size` bytes, the final one LAST."""
    parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return b"".join(bdat(p, last=i == len(parts) - 1) for i, p in enumerate(parts))


@pytest.fixture
def recording(gateway_factory: GatewayFactory) -> tuple[Any, RecordingEgress]:
    egress = RecordingEgress()
    return gateway_factory(egress), egress


def test_chunking_is_advertised_and_binarymime_is_not(recording: Any) -> None:
    gate, _ = recording
    transcript = raw_session(gate.port, b"QUIT\r\n")
    assert "250-CHUNKING\r\n" in transcript
    assert "BINARYMIME" not in transcript
    refused = raw_session(gate.port, b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nQUIT\r\n")
    assert codes(refused)[-2] == 501


def test_one_chunk_relays_byte_for_byte_to_smtp_sink(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    gate = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path))
    transcript = raw_session(gate.port, ENVELOPE + bdat(MESSAGE, last=True) + b"QUIT\r\n")
    assert codes(transcript)[-4:] == [250, 250, 250, 221], transcript
    (got,) = smtp_sink.wait_for_messages(1)
    assert untraced(got.data) == MESSAGE
    assert got.rcpts == ("b@example.net",)


@pytest.mark.parametrize("size", [1, 2, 7, 40, 1000])
def test_pipelined_chunks_of_any_size_give_the_same_bytes(recording: Any, size: int) -> None:
    gate, egress = recording
    payload = ENVELOPE + chunks(MESSAGE, size) + b"NOOP\r\nQUIT\r\n"
    transcript = raw_session(gate.port, payload)
    count = -(-len(MESSAGE) // size)
    assert codes(transcript)[1:] == [250, 250, 250] + [250] * count + [250, 221]
    (delivered,) = egress.delivered
    assert untraced(delivered.data) == MESSAGE


def test_bdat_0_last_ends_a_message_and_an_empty_message_is_delivered(recording: Any) -> None:
    gate, egress = recording
    payload = (
        ENVELOPE
        + bdat(MESSAGE[:30])
        + bdat(MESSAGE[30:])
        + b"BDAT 0 LAST\r\n"
        + ENVELOPE
        + b"BDAT 0 LAST\r\nQUIT\r\n"
    )
    transcript = raw_session(gate.port, payload)
    assert "250 2.0.0 Ok: 30 bytes, 30 in all" in transcript
    assert codes(transcript)[-9:] == [250, 250, 250, 250, 250, 250, 250, 250, 221]
    first, empty = egress.delivered
    assert untraced(first.data) == MESSAGE
    raw_session(gate.port, ENVELOPE + b"DATA\r\n.\r\nQUIT\r\n")
    assert untraced(empty.data) == untraced(egress.delivered[2].data) == b"\r\n"


def test_a_message_without_a_final_crlf_gets_one(recording: Any) -> None:
    gate, egress = recording
    raw_session(gate.port, ENVELOPE + bdat(b"Subject: x\r\n\r\nno end", last=True) + b"QUIT\r\n")
    assert untraced(egress.delivered[0].data) == b"Subject: x\r\n\r\nno end\r\n"


def test_data_after_bdat_in_one_transaction_is_503(recording: Any) -> None:
    gate, egress = recording
    payload = ENVELOPE + bdat(MESSAGE[:20]) + b"DATA\r\n" + bdat(MESSAGE[20:], last=True)
    transcript = raw_session(gate.port, payload + b"QUIT\r\n")
    assert "503 5.5.1 DATA not allowed after BDAT" in transcript
    assert codes(transcript)[-4:] == [250, 503, 250, 221]
    assert untraced(egress.delivered[0].data) == MESSAGE


@pytest.mark.parametrize(
    ("before", "reply"),
    [
        (b"", "503 5.5.1 Need MAIL command"),
        (b"MAIL FROM:<a@example.com>\r\n", "503 5.5.1 Need RCPT command"),
    ],
    ids=["before-mail", "before-rcpt"],
)
def test_bdat_out_of_order_is_503_and_its_bytes_are_not_commands(
    recording: Any, before: bytes, reply: str
) -> None:
    gate, egress = recording
    payload = before + bdat(SMUGGLED, last=True) + b"NOOP\r\nQUIT\r\n"
    transcript = raw_session(gate.port, payload)
    assert reply in transcript
    assert codes(transcript)[-3:] == [503, 250, 221], transcript
    assert egress.rcpts == [] and egress.delivered == []


@pytest.mark.parametrize(
    "command", [b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 10 MORE", b"BDAT 1 LAST x", b"BDAT 1e3"]
)
def test_a_bdat_size_that_cannot_be_read_is_501_and_the_session_ends(
    recording: Any, command: bytes
) -> None:
    gate, egress = recording
    transcript = raw_session(gate.port, ENVELOPE + command + b"\r\n" + SMUGGLED + b"QUIT\r\n")
    assert transcript.endswith("501 5.5.4 Syntax: BDAT size [LAST], closing connection\r\n")
    assert egress.rcpts == ["b@example.net"] and egress.delivered == []


def test_a_chunk_past_the_size_limit_is_552_and_consumed(gateway_factory: GatewayFactory) -> None:
    egress = RecordingEgress()
    gate = gateway_factory(egress, max_message_size=1000)
    body = SMUGGLED * 20  # 1340 bytes of commands
    payload = (
        ENVELOPE
        + bdat(body[:600])
        + bdat(body[600:1200])
        + bdat(body[1200:], last=True)
        + b"NOOP\r\n"
        + ENVELOPE
        + bdat(MESSAGE, last=True)
        + b"QUIT\r\n"
    )
    transcript = raw_session(gate.port, payload)
    assert codes(transcript)[2:] == [250, 250, 250, 552, 552, 250, 250, 250, 250, 221]
    assert transcript.count("552 5.3.4 Message too big, limit is 1000 bytes") == 2
    # The session stayed in sync: the next message went through, nothing smuggled ran.
    (delivered,) = egress.delivered
    assert untraced(delivered.data) == MESSAGE
    assert egress.rcpts == ["b@example.net", "b@example.net"]


def test_one_huge_chunk_is_refused_from_its_announced_size(
    gateway_factory: GatewayFactory,
) -> None:
    gate = gateway_factory(RecordingEgress(), max_message_size=1000)
    transcript = raw_session(gate.port, ENVELOPE + bdat(b"x" * 5000, last=True) + b"QUIT\r\n")
    assert codes(transcript)[-2:] == [552, 221]


@pytest.mark.parametrize(
    ("settings", "message", "reply"),
    [
        ({"max_header_size": 100}, b"X-Long: " + b"a" * 150 + b"\r\n\r\nbody\r\n", "552 5.3.4"),
        ({"max_line_length": 100}, b"Subject: x\r\n\r\n" + b"b" * 200 + b"\r\n", "500 5.5.2"),
        ({}, b"Subject: x\r\n\r\nbare\nline\r\n", "554 5.6.0"),
        ({}, b"Subject: x\r\n\r\nnul \0 byte\r\n", "554 5.6.0"),
        ({"max_received": 2}, b"Received: a\r\n" * 3 + b"\r\nloop\r\n", "554 5.4.6"),
    ],
    ids=["header-size", "line-length", "bare-lf", "nul", "hop-count"],
)
def test_every_data_limit_holds_for_bdat(
    gateway_factory: GatewayFactory, settings: dict[str, Any], message: bytes, reply: str
) -> None:
    egress = RecordingEgress()
    gate = gateway_factory(egress, **settings)
    payload = ENVELOPE + chunks(message, 16) + b"NOOP\r\nQUIT\r\n"
    transcript = raw_session(gate.port, payload)
    assert reply in transcript, transcript
    assert codes(transcript)[-2:] == [250, 221]
    assert egress.delivered == []


def test_a_line_of_exactly_the_limit_passes(gateway_factory: GatewayFactory) -> None:
    egress = RecordingEgress()
    gate = gateway_factory(egress, max_line_length=100)
    message = b"Subject: x\r\n\r\n" + b"." + b"b" * 97 + b"\r\n"  # 100 bytes with its CRLF
    raw_session(gate.port, ENVELOPE + chunks(message, 9) + b"QUIT\r\n")
    assert untraced(egress.delivered[0].data) == message


def test_bare_line_endings_are_normalized_when_configured(gateway_factory: GatewayFactory) -> None:
    egress = RecordingEgress()
    gate = gateway_factory(egress, bare_line_endings="normalize")
    raw_session(gate.port, ENVELOPE + chunks(b"Subject: x\n\nbare\rline\n", 3) + b"QUIT\r\n")
    assert untraced(egress.delivered[0].data) == b"Subject: x\r\n\r\nbare\r\nline\r\n"


def test_a_stalled_chunk_times_out(gateway_factory: GatewayFactory) -> None:
    gate = gateway_factory(RecordingEgress(), data_timeout=0.5)
    transcript = raw_session(gate.port, ENVELOPE + b"BDAT 100 LAST\r\nonly this", timeout=5)
    assert transcript.endswith("421 4.4.2 Timeout exceeded, closing connection\r\n")


class SeesMessage:
    """Records what the plugins see of a message, and can refuse at DATA."""

    def __init__(self, refuse_data: bool = False) -> None:
        self.refuse_data = refuse_data
        self.seen: list[tuple[str, Any]] = []

    @hookimpl
    def on_data(self) -> Verdict | None:
        self.seen.append(("data", None))
        return Verdict.reject(554, "5.7.1", "no thanks") if self.refuse_data else None

    @hookimpl
    def on_headers(self, headers: list[Header]) -> None:
        self.seen.append(("headers", [(h.name, h.value) for h in headers[1:]]))

    @hookimpl
    def on_message(self, transaction: Transaction) -> None:
        assert transaction.message is not None
        self.seen.append(("message", b"".join(transaction.message.iter_bytes())))


def test_plugins_see_a_bdat_message_as_a_data_message(gateway_factory: GatewayFactory) -> None:
    by_data, by_bdat = SeesMessage(), SeesMessage()
    stuffed = MESSAGE.replace(b"\r\n.", b"\r\n..")
    data_gate = gateway_factory(RecordingEgress(), [by_data])
    raw_session(data_gate.port, ENVELOPE + b"DATA\r\n" + stuffed + b".\r\nQUIT\r\n")
    bdat_gate = gateway_factory(RecordingEgress(), [by_bdat])
    raw_session(bdat_gate.port, ENVELOPE + chunks(MESSAGE, 11) + b"QUIT\r\n")
    assert [kind for kind, _ in by_bdat.seen] == ["data", "headers", "message"]
    assert by_bdat.seen[1] == by_data.seen[1]
    assert untraced(by_bdat.seen[2][1]) == untraced(by_data.seen[2][1]) == MESSAGE


def test_a_refusal_at_data_answers_the_first_chunk_and_the_rest(
    gateway_factory: GatewayFactory,
) -> None:
    egress = RecordingEgress()
    gate = gateway_factory(egress, [SeesMessage(refuse_data=True)])
    transcript = raw_session(gate.port, ENVELOPE + chunks(MESSAGE, 60) + b"NOOP\r\nQUIT\r\n")
    parts = -(-len(MESSAGE) // 60)
    assert codes(transcript)[-(parts + 2) :] == [554] * parts + [250, 221]
    assert egress.delivered == [] and egress.aborted == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs for the spool (the tests run as root)."""
    mount = tmp_path / "spool"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_spool_disk_is_452_and_the_chunks_are_never_read_as_commands(
    gateway_factory: GatewayFactory, small_disk: Path
) -> None:
    egress = RecordingEgress()
    gate = gateway_factory(egress, spool_directory=str(small_disk), spool_threshold=4096)
    body = b"Subject: big\r\n\r\n" + SMUGGLED * (1024 * 1024 // len(SMUGGLED))
    transcript = raw_session(
        gate.port, ENVELOPE + chunks(body, 256 * 1024) + b"NOOP\r\nQUIT\r\n", timeout=20
    )
    assert "452 4.3.1 Insufficient system storage" in transcript
    assert codes(transcript)[-2:] == [250, 221]
    assert egress.delivered == [] and egress.rcpts == ["b@example.net"]


def test_one_50_mib_chunk_is_spooled_not_held_in_memory(
    smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """A single BDAT of 50 MiB raises peak RSS by less than 20 MiB: the chunk is read in
    pieces into the spool, as DATA is (tests/smtp/test_spooling.py)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.smtp.listener_process",
            f"{smtp_sink.host}:{smtp_sink.port}",
            str(tmp_path / "quarantine"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        warm_up = big_message(2 * MIB)
        assert (
            codes(raw_session(port, ENVELOPE + bdat(warm_up, last=True) + b"QUIT\r\n"))[-2] == 250
        )
        before = peak_rss(process.pid)
        message = big_message(50 * MIB)
        transcript = raw_session(
            port, ENVELOPE + bdat(message, last=True) + b"QUIT\r\n", timeout=60
        )
        after = peak_rss(process.pid)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)
    assert codes(transcript)[-2] == 250, transcript
    print(f"peak RSS {before / MIB:.1f} MiB -> {after / MIB:.1f} MiB")
    assert after - before < 20 * MIB
    got = smtp_sink.wait_for_messages(2, timeout=30)
    assert hashlib.sha256(untraced(got[-1].data)).digest() == hashlib.sha256(message).digest()
