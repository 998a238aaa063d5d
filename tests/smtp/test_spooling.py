"""Large messages are spooled to disk: relaying 50 MiB raises peak RSS by less than 20 MiB."""

from __future__ import annotations

import hashlib
import smtplib
import subprocess
import sys
from pathlib import Path

from tests.peers.smtp_sink import SmtpSink
from tests.smtp.helpers import untraced

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def big_message(size: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_/+=!?\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def test_relaying_50_mib_raises_peak_rss_by_less_than_20_mib(
    smtp_sink: SmtpSink, tmp_path: Path
) -> None:
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
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            # Warm up: every module and buffer a message needs is in place before measuring.
            client.sendmail("a@example.com", ["b@example.net"], big_message(2 * MIB))
            before = peak_rss(process.pid)
            message = big_message(50 * MIB)
            client.sendmail("a@example.com", ["b@example.net"], message)
            after = peak_rss(process.pid)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)
    print(f"peak RSS {before / MIB:.1f} MiB -> {after / MIB:.1f} MiB")
    assert after - before < 20 * MIB
    got = max(smtp_sink.messages(), key=lambda m: len(m.data))
    assert hashlib.sha256(untraced(got.data)).digest() == hashlib.sha256(message).digest()
