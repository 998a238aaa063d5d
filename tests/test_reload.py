"""SIGHUP does what it says: finds new plugins, and names what it could not apply.

`mailgate serve` runs as a real process; the tests change its configuration (or install a
plugin with pip), send SIGHUP, and read its JSON log lines.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailgate.loader import load_config
from mailgate.reloading import restart_needed, start_settings
from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink
from tests.test_cli import log_lines, send, serving, wait_for_port

EXAMPLE = Path(__file__).parent.parent / "contrib" / "mailgate-plugin-example"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

Event = dict[str, object]


def wait_for_event(tmp_path: Path, test: Callable[[Event], bool], after: int = 0) -> Event:
    """The first log line past the first `after` lines for which `test` is true."""
    deadline = time.monotonic() + 15
    while True:
        found = [e for e in log_lines(tmp_path)[after:] if test(e)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "not logged"
        time.sleep(0.05)


def reload(proc: subprocess.Popen[bytes], tmp_path: Path) -> list[Event]:
    """Send SIGHUP; return the lines logged by that reload (up to and with its warnings)."""
    before = len(log_lines(tmp_path))
    proc.send_signal(signal.SIGHUP)
    wait_for_event(tmp_path, lambda e: e["event"] == "configuration reloaded", before)
    time.sleep(0.2)  # the warnings follow the reloaded line
    return log_lines(tmp_path)[before:]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    directory = tmp_path / "conf"
    directory.mkdir()
    return directory


# -- settings applied only at start ---------------------------------------------------------------


def test_restart_needed_names_changed_listener_relay_and_metrics_keys(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[[listener]]\naddress = "127.0.0.1:2525"\n')
    running = start_settings(load_config(tmp_path))
    (tmp_path / "mailgate.toml").write_text(
        '[[listener]]\naddress = "127.0.0.1:2526"\nmax_errors = 3\n'
        '[[listener]]\ntype = "policy"\n'
        '[relay]\npool_size = 2\n[metrics]\naddress = "127.0.0.1:9425"\n'
        '[logging]\nlevel = "debug"\n'
    )
    new = start_settings(load_config(tmp_path))
    assert restart_needed(running, new) == [
        "metrics.address",
        "relay.pool_size",
        "listener[0].address",
        "listener[0].max_errors",
        "listener[1]",
    ]
    assert restart_needed(running, running) == []


def test_a_reload_names_the_keys_that_need_a_restart(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    with serving(tmp_path, smtp_sink) as (proc, _):
        (conf / "mailgate.toml").write_text("[relay]\npool_size = 2\n[metrics]\n")
        lines = reload(proc, tmp_path)
        (reloaded,) = [e for e in lines if e["event"] == "configuration reloaded"]
        assert reloaded["restart_needed"] == ["relay.pool_size"]
        (warning,) = [e for e in lines if e["level"] == "warning"]
        assert warning["event"] == "changed settings take effect only after a restart"
        assert warning["keys"] == ["relay.pool_size"]

        # Still not applied at the next reload: it is still named.
        (conf / "10-add_header.toml").write_text('name = "X-Test"\n')
        lines = reload(proc, tmp_path)
        (reloaded,) = [e for e in lines if e["event"] == "configuration reloaded"]
        assert reloaded["restart_needed"] == ["relay.pool_size"]

        (conf / "mailgate.toml").write_text("")
        lines = reload(proc, tmp_path)
        (reloaded,) = [e for e in lines if e["event"] == "configuration reloaded"]
        assert reloaded["restart_needed"] == []
        assert not [e for e in lines if e["level"] == "warning"]


def test_a_reload_warns_of_a_misnamed_plugin_file(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    with serving(tmp_path, smtp_sink) as (proc, _):
        (conf / "add_header.toml").write_text('name = "X-Test"\n')
        lines = reload(proc, tmp_path)
        (warning,) = [e for e in lines if e["level"] == "warning"]
        assert f"{conf}/add_header.toml: (file name)" in str(warning["problem"])


# -- plugins installed, or changed, after start ----------------------------------------------------


@pytest.fixture
def editable_example(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """Call it to ``pip install -e`` a copy of the example plugin; returns the copy's module."""
    source = tmp_path / "mailgate-plugin-example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    installed = False

    def install() -> Path:
        nonlocal installed
        subprocess.run(
            [*PIP, "install", "--no-deps", "--no-build-isolation", "-e", str(source)],
            check=True,
            timeout=120,
        )
        installed = True
        return source / "mailgate_plugin_example" / "__init__.py"

    yield install
    if installed:
        subprocess.run([*PIP, "uninstall", "-y", "mailgate-plugin-example"], check=True, timeout=60)


def test_a_plugin_installed_after_start_is_found_and_its_changed_code_named(
    conf: Path,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    editable_example: Callable[[], Path],
) -> None:
    with serving(tmp_path, smtp_sink) as (proc, port):
        module = editable_example()
        (conf / "30-subject_tag.toml").write_text('tag = "[NEW]"\n')
        lines = reload(proc, tmp_path)
        assert not [e for e in lines if str(e["event"]).startswith("configuration refused")]
        (reloaded,) = [e for e in lines if e["event"] == "configuration reloaded"]
        assert reloaded["plugins"] == ["relay_control", "sender_auth", "subject_tag"]
        send(port, "hello")
        assert smtp_sink.wait_for_messages(1)[0].header("Subject") == "[NEW] hello"

        # Unchanged code: no warning.
        assert not [e for e in reload(proc, tmp_path) if e["level"] == "warning"]

        module.write_text(module.read_text() + "\n# changed after it was loaded\n")
        lines = reload(proc, tmp_path)
        (warning,) = [e for e in lines if e["level"] == "warning"]
        assert str(warning["event"]).startswith("plugin code changed since it was loaded")
        assert warning["plugin"] == "subject_tag"
        assert warning["files"] == [str(module)]


# -- finding the running server: pidof, --pid-file, mailgate reload ------------------------------

MAILGATE = str(Path(sys.executable).parent / "mailgate")


@pytest.fixture
def server(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``mailgate serve --config conf --pid-file run/mailgate.pid``, the installed command."""
    port = free_port()
    (conf / "mailgate.toml").write_text(
        f'[[listener]]\naddress = "127.0.0.1:{port}"\n'
        f'[relay]\naddress = "{smtp_sink.host}:{smtp_sink.port}"\n'
    )
    pid_path = tmp_path / "run" / "mailgate.pid"
    pid_path.parent.mkdir()
    log = (tmp_path / "mailgate.log").open("wb")
    proc = subprocess.Popen(
        [MAILGATE, "serve", "--config", str(conf), "--pid-file", str(pid_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port(port, proc)
        yield proc, pid_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        log.close()


def reloads(tmp_path: Path) -> int:
    return sum(e["event"] == "configuration reloaded" for e in log_lines(tmp_path))


def wait_for_reloads(tmp_path: Path, count: int) -> None:
    wait_for_event(tmp_path, lambda e: reloads(tmp_path) >= count)


def test_pidof_mailgate_finds_the_server(
    conf: Path, server: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, _ = server
    pids = subprocess.run(["pidof", "mailgate"], capture_output=True, text=True).stdout.split()
    assert str(proc.pid) in pids
    ps = ["ps", "-ww", "-o", "args=", "-p", str(proc.pid)]
    title = subprocess.run(ps, capture_output=True, text=True).stdout.strip()
    assert title == f"mailgate serve --config {conf.resolve()}"


def test_the_pid_file_is_written_and_removed(
    server: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, pid_path = server
    assert pid_path.read_text() == f"{proc.pid}\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not pid_path.exists()


def test_a_second_server_with_the_same_pid_file_is_refused(
    conf: Path, server: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, pid_path = server
    second = subprocess.run(
        [MAILGATE, "serve", "--config", str(conf), "--listen", "127.0.0.1:0", "--pid-file",
         str(pid_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1
    assert f"cannot start: {pid_path}: mailgate already runs as process {proc.pid}" in (
        second.stderr
    )
    assert pid_path.read_text() == f"{proc.pid}\n"


@pytest.mark.parametrize("how", ["--config", "--pid-file"])
def test_mailgate_reload_checks_then_signals(
    how: str, conf: Path, tmp_path: Path, server: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, pid_path = server
    command = [MAILGATE, "reload", "--config", str(conf)]
    if how == "--pid-file":
        command += ["--pid-file", str(pid_path)]
    (conf / "10-add_header.toml").write_text('name = "X-Test"\n')
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"configuration OK; mailgate serve (pid {proc.pid}) told to reload (SIGHUP)\n"
    )
    wait_for_reloads(tmp_path, 1)

    # A broken file: the command says so, and the server is not signalled.
    (conf / "20-broken.toml").write_text("")
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert f"{conf}/20-broken.toml: plugin" in refused.stderr
    time.sleep(0.3)
    assert reloads(tmp_path) == 1
    assert not [e for e in log_lines(tmp_path) if "refused" in str(e["event"])]


def test_mailgate_reload_without_a_server_says_so(conf: Path) -> None:
    done = subprocess.run(
        [MAILGATE, "reload", "--config", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"mailgate reload: no running 'mailgate serve --config {conf.resolve()}' found "
        "(give --pid-file?)\n"
    )
