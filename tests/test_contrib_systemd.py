"""contrib/systemd/mailgate.service: systemd accepts it, and its commands do what it says.

The unit's paths are replaced by this checkout's: /opt/mailgate/bin/mailgate by the venv's
mailgate, /etc/mailgate by a test configuration, /run/mailgate by a temporary directory. Then
its start, reload and stop are carried out the way systemd would: ExecStartPre, ExecStart, each
ExecReload in turn (``$MAINPID`` replaced, should one use it), and KillSignal.
"""

from __future__ import annotations

import os
import shlex
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink
from tests.test_cli import wait_for_port

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "contrib" / "systemd" / "mailgate.service"
MAILGATE = str(Path(sys.executable).parent / "mailgate")


def service_settings(text: str) -> list[tuple[str, str]]:
    """The ``key=value`` lines of the unit's ``[Service]`` section, in order (keys repeat)."""
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def localised(conf: Path, run: Path | None = None) -> str:
    """The unit with this checkout's mailgate, `conf` (and `run`) in place of installed paths."""
    text = UNIT.read_text()
    text = text.replace("/opt/mailgate/bin/mailgate", MAILGATE).replace("/etc/mailgate", str(conf))
    return text.replace("/run/mailgate/", f"{run}/") if run is not None else text


def commands(unit: str, key: str, pid: int = 0) -> list[list[str]]:
    """Each `key` line as an argument list, ``$MAINPID`` replaced by `pid`."""
    return [
        shlex.split(value.replace("$MAINPID", str(pid)))
        for k, value in service_settings(unit)
        if k == key
    ]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "mailgate.service"
    unit.write_text(localised(tmp_path))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr
    assert dict(service_settings(unit.read_text()))["User"] == "mailgate"


@pytest.fixture
def conf(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[Path, int]]:
    directory = tmp_path / "etc-mailgate"
    directory.mkdir()
    port = free_port()
    (directory / "mailgate.toml").write_text(
        f'[[listener]]\naddress = "127.0.0.1:{port}"\n'
        f'[relay]\naddress = "{smtp_sink.host}:{smtp_sink.port}"\n'
    )
    (directory / "10-add_header.toml").write_text('name = "X-Unit"\nvalue = "first"\n')
    yield directory, port


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.net", ["b@example.org"], b"Subject: unit\r\n\r\nhi\r\n")


def test_start_reload_and_stop_as_systemd_runs_them(
    conf: tuple[Path, int], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    directory, port = conf
    run = tmp_path / "run-mailgate"  # systemd makes it: RuntimeDirectory=mailgate
    run.mkdir()
    unit = localised(directory, run)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for pre in commands(unit, "ExecStartPre"):
        assert subprocess.run(pre, capture_output=True, timeout=60, env=env).returncode == 0
    (start,) = commands(unit, "ExecStart")
    log = (tmp_path / "journal").open("wb")
    proc = subprocess.Popen(start, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, proc)
        send(port)
        assert smtp_sink.wait_for_messages(1)[0].header("X-Unit") == "first"

        (directory / "10-add_header.toml").write_text('name = "X-Unit"\nvalue = "second"\n')
        for reload in commands(unit, "ExecReload", proc.pid):
            assert subprocess.run(reload, capture_output=True, timeout=60).returncode == 0
        deadline = time.monotonic() + 10
        while b"configuration reloaded" not in (tmp_path / "journal").read_bytes():
            assert time.monotonic() < deadline, "no reload logged"
            time.sleep(0.05)
        send(port)
        assert smtp_sink.wait_for_messages(2)[1].header("X-Unit") == "second"

        # A broken file: ExecReload fails and says where, and the server is not signalled.
        (directory / "20-broken.toml").write_text("")
        (reload,) = commands(unit, "ExecReload", proc.pid)
        refused = subprocess.run(reload, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "20-broken.toml" in refused.stderr
        time.sleep(0.3)
        journal = (tmp_path / "journal").read_bytes()
        assert journal.count(b"configuration reloaded") == 1
        assert b"configuration refused" not in journal

        kill_signal = dict(service_settings(unit))["KillSignal"]
        proc.send_signal(getattr(signal, kill_signal))
        assert proc.wait(timeout=30) == 0, "a clean stop: Restart=on-failure does not fire"
        assert not (run / "mailgate.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
