"""The mailgate command: check-config, plugins, and serve as a real process with signals."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink

MAILGATE = [sys.executable, "-m", "mailgate.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAILGATE, *args], capture_output=True, text=True, timeout=60)


def test_check_config_accepts_a_good_directory(tmp_path: Path) -> None:
    (tmp_path / "10-add_header.toml").write_text('name = "X-Test"\n')
    result = run("check-config", "--config", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "plugins: relay_control, sender_auth, add_header" in result.stdout


def test_check_config_names_file_key_found_expected(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text("[relay]\naddress = 42\n")
    result = run("check-config", "--config", str(tmp_path))
    assert result.returncode == 1
    expected = f'{tmp_path}/mailgate.toml: relay.address: found 42 (int), expected "host:port"'
    assert expected in result.stderr


def test_check_config_refuses_a_bad_plugin_file(tmp_path: Path) -> None:
    (tmp_path / "20-add_header.toml").write_text('nmae = "X"\n')
    result = run("check-config", "--config", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}/20-add_header.toml: nmae: found an unknown key" in result.stderr
    assert 'did you mean "name"?' in result.stderr


def test_bundled_conf_d_is_valid() -> None:
    conf_d = Path(__file__).parent.parent / "conf.d"
    result = run("check-config", "--config", str(conf_d))
    assert result.returncode == 0, result.stderr


def test_plugins_lists_installed_enabled_and_order(tmp_path: Path) -> None:
    (tmp_path / "10-add_header.toml").write_text("")
    (tmp_path / "20-clamav.toml").write_text("enabled = false\n")
    result = run("plugins", "--config", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("add_header", "clamav", "relay_control", "spamassassin"):
        assert name in out
    enabled = out.split("Enabled, in calling order:")[1]
    assert enabled.index("1. relay_control") < enabled.index("3. add_header")
    assert "clamav  (" in enabled and "enabled = false" in enabled


LONG_NAME = "a_plugin_whose_name_is_longer_than_any_column_was"


def test_plugins_keeps_its_columns_with_a_long_name(tmp_path: Path) -> None:
    dist = tmp_path / "site" / "long_named-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: long-named-plugin-distribution\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[mailgate.plugins]\n{LONG_NAME} = mailgate.plugins.add_header:AddHeader\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run(
        [*MAILGATE, "plugins", "--config", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    installed = result.stdout.split("\n\n")[0].splitlines()[1:]
    assert any(line.split()[0] == LONG_NAME for line in installed)
    # Every row's second, third and fourth columns start where the others' do.
    for column in (1, 2, 3):
        starts = {_column_start(line, column) for line in installed}
        assert len(starts) == 1, f"column {column} starts at {sorted(starts)}"
    long_row = next(line for line in installed if LONG_NAME in line)
    assert long_row.split() == [
        LONG_NAME, "long-named-plugin-distribution", "0.1",
        "mailgate.plugins.add_header:AddHeader", "-",
    ]  # fmt: skip


def _column_start(line: str, column: int) -> int:
    """Where the `column`-th column (from 0) starts: columns are separated by 2+ spaces."""
    starts = [0] + [m.end() for m in re.finditer(r"\S {2,}(?=\S)", line)]
    return starts[column]


def test_plugins_exits_quietly_when_the_reader_goes_away(tmp_path: Path) -> None:
    # As `mailgate plugins | head -1` where head has gone before mailgate writes: the pipe's
    # reading end is closed before the interpreter has even started.
    reader, writer = os.pipe()
    os.close(reader)
    proc = subprocess.Popen(
        [*MAILGATE, "plugins", "--config", str(tmp_path)], stdout=writer, stderr=subprocess.PIPE
    )
    os.close(writer)
    _, stderr = proc.communicate(timeout=60)
    assert stderr.decode() == ""
    assert proc.returncode == 0


def test_without_config_the_search_order_is_conf_d_then_etc(tmp_path: Path) -> None:
    here = tmp_path / "here"
    (here / "conf.d").mkdir(parents=True)
    (here / "conf.d" / "mailgate.toml").write_text('[relay]\naddress = "127.0.0.1:2626"\n')
    found = subprocess.run(
        [*MAILGATE, "check-config"], capture_output=True, text=True, timeout=60, cwd=here
    )
    assert found.returncode == 0, found.stderr
    assert found.stderr.startswith("mailgate: reading the configuration in conf.d/\n")
    assert "relay: 127.0.0.1:2626" in found.stdout
    if Path("/etc/mailgate").exists():
        return  # this machine has one: what follows would read it
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run(
        [*MAILGATE, "check-config"], capture_output=True, text=True, timeout=60, cwd=empty
    )
    assert none.returncode == 0, none.stderr
    assert "no conf.d/ and /etc/mailgate/: using the built-in defaults" in none.stderr
    assert "relay: 127.0.0.1:25" in none.stdout


# -- serve ---------------------------------------------------------------------------------------


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mailgate exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"mailgate did not listen on {port} within {timeout}s")


@contextmanager
def serving(
    tmp_path: Path, smtp_sink: SmtpSink, *options: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`mailgate serve` on ``tmp_path/conf`` as a real process, logging to ``mailgate.log``."""
    port = free_port()
    log = (tmp_path / "mailgate.log").open("wb")
    proc = subprocess.Popen(
        [
            *MAILGATE,
            "serve",
            "--config",
            str(tmp_path / "conf"),
            "--listen",
            f"127.0.0.1:{port}",
            "--relay",
            f"{smtp_sink.host}:{smtp_sink.port}",
            *options,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port(port, proc)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        log.close()


@pytest.fixture
def served(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    with serving(tmp_path, smtp_sink) as proc_port:
        yield proc_port


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(
            "a@example.net",
            ["b@example.org"],
            f"From: a@example.net\r\nSubject: {subject}\r\n\r\nhi\r\n".encode(),
        )


def log_lines(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "mailgate.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    directory = tmp_path / "conf"
    directory.mkdir()
    return directory


def test_serve_relays_reloads_on_sighup_and_stops_on_sigterm(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink, served: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = served
    send(port, "one")
    (first,) = smtp_sink.wait_for_messages(1)
    assert first.header("X-Reloaded") is None

    (conf / "10-add_header.toml").write_text('name = "X-Reloaded"\nvalue = "yes"\n')
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(e["event"] == "configuration reloaded" for e in log_lines(tmp_path)):
        assert time.monotonic() < deadline, "no reload logged"
        time.sleep(0.05)
    send(port, "two")
    second = smtp_sink.wait_for_messages(2)[1]
    assert second.header("X-Reloaded") == "yes"

    (conf / "20-broken.toml").write_text("")
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(str(e["event"]).startswith("configuration refused") for e in log_lines(tmp_path)):
        assert time.monotonic() < deadline, "no refusal logged"
        time.sleep(0.05)
    send(port, "three")
    third = smtp_sink.wait_for_messages(3)[2]
    assert third.header("X-Reloaded") == "yes", "the old configuration stays"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    events = log_lines(tmp_path)
    assert events[-1]["event"] == "stopped"
    session_lines = [e for e in events if e.get("session")]
    assert session_lines, "session ids are on the lines of a session"
    (started,) = [e for e in events if e["event"] == "started"]
    assert started["event_loop"] == "uvloop", "auto picks uvloop when it is installed"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_runs_on_the_configured_event_loop(
    loop: str, conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    (conf / "mailgate.toml").write_text(f'[mailgate]\nevent_loop = "{loop}"\n')
    (conf / "10-add_header.toml").write_text(f'name = "X-Loop"\nvalue = "{loop}"\n')
    with serving(tmp_path, smtp_sink) as (_, port):
        send(port, loop)
        (message,) = smtp_sink.wait_for_messages(1)
    assert message.header("X-Loop") == loop
    (started,) = [e for e in log_lines(tmp_path) if e["event"] == "started"]
    assert started["event_loop"] == loop


def test_serve_log_level_wins_over_the_file_also_after_a_reload(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    (conf / "mailgate.toml").write_text('[logging]\nlevel = "debug"\n')
    with serving(tmp_path, smtp_sink, "--log-level", "warning") as (proc, port):
        send(port, "before")
        smtp_sink.wait_for_messages(1)
        (conf / "10-add_header.toml").write_text('name = "X-Reloaded"\nvalue = "yes"\n')
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        sent = 1
        while True:  # the reload's own log line is info: below the level, so not there to see
            send(port, "after")
            sent += 1
            if smtp_sink.wait_for_messages(sent)[-1].header("X-Reloaded") == "yes":
                break
            assert time.monotonic() < deadline, "the reload never took effect"
            time.sleep(0.1)
    levels = {e["level"] for e in log_lines(tmp_path)}
    assert levels <= {"warning", "error"}, f"logged below --log-level: {levels}"


def test_serve_with_a_bad_configuration_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[[listener]]\naddress = "nowhere"\n')
    result = run("serve", "--config", str(tmp_path))
    assert result.returncode == 1
    assert 'listener[0].address: found "nowhere" (str), expected "host:port"' in result.stderr
