"""A plugin that breaks the contract, as an administrator meets it: ``check-config``, ``try``,
``serve`` and a SIGHUP reload all give the same one-line error, and a reload keeps the old chain."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.config.contract_plugins import install_contract_plugins
from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink
from tests.test_cli import MAILGATE, log_lines, send, wait_for_port

ROOT = Path(__file__).parent.parent
MESSAGE = b"From: alice@example.com\nTo: bob@example.org\nSubject: Hello\n\nHi\n"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment in which the plugins of `tests.config.contract_plugins` are installed."""
    site = install_contract_plugins(tmp_path / "site")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    directory = tmp_path / "conf"
    directory.mkdir()
    return directory


def mailgate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILGATE, *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def misspelled(conf: Path) -> str:
    """Enable the plugin with ``on_recipient``; return the error every command should give."""
    (conf / "20-misspelled_hook.toml").write_text("")
    return (
        f"mailgate: configuration error: {conf}/20-misspelled_hook.toml: plugin misspelled_hook: "
        "hook on_recipient: no such hook (did you mean on_rcpt?)\n"
    )


def test_check_config_names_the_plugin_the_hook_and_the_reason(
    env: dict[str, str], conf: Path
) -> None:
    expected = misspelled(conf)
    result = mailgate(env, "check-config", "--config", str(conf))
    assert (result.returncode, result.stdout, result.stderr) == (1, "", expected)


def test_check_config_names_an_unknown_argument(env: dict[str, str], conf: Path) -> None:
    (conf / "20-unknown_argument.toml").write_text("")
    result = mailgate(env, "check-config", "--config", str(conf))
    assert result.returncode == 1
    assert result.stderr == (
        f"mailgate: configuration error: {conf}/20-unknown_argument.toml: plugin "
        "unknown_argument: hook on_rcpt: unknown argument 'rcpt' "
        "(the hook offers session, transaction, recipient)\n"
    )


def test_try_gives_the_same_error(env: dict[str, str], conf: Path, tmp_path: Path) -> None:
    expected = misspelled(conf)
    (tmp_path / "message.eml").write_bytes(MESSAGE)
    result = mailgate(env, "try", "--config", str(conf), str(tmp_path / "message.eml"))
    assert (result.returncode, result.stdout, result.stderr) == (1, "", expected)


def test_try_shows_a_wrong_answer_as_a_failure_under_on_error(
    env: dict[str, str], conf: Path, tmp_path: Path
) -> None:
    (conf / "20-wrong_answer.toml").write_text('on_error = "reject"\n')
    (tmp_path / "message.eml").write_bytes(MESSAGE)
    result = mailgate(env, "try", "--config", str(conf), str(tmp_path / "message.eml"))
    assert result.returncode == 5, result.stderr
    [line] = [ln for ln in result.stdout.splitlines() if "wrong_answer.on_rcpt" in ln]
    assert line.lstrip().startswith("failed")
    assert "returned '550 no' (str), not None or Verdict" in line
    assert line.endswith("on_error = reject -> 554 5.3.0 Local policy failure")
    assert '"hook": "on_rcpt"' in result.stderr


def test_serve_does_not_start(env: dict[str, str], conf: Path) -> None:
    expected = misspelled(conf)
    result = mailgate(env, "serve", "--config", str(conf), "--listen", f"127.0.0.1:{free_port()}")
    assert (result.returncode, result.stderr) == (1, expected)


def wait_for_event(tmp_path: Path, prefix: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in log_lines(tmp_path) if str(e["event"]).startswith(prefix)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {prefix!r} logged"
        time.sleep(0.05)


def test_sighup_refuses_it_and_keeps_the_old_chain(
    env: dict[str, str], conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    (conf / "10-add_header.toml").write_text('name = "X-Chain"\nvalue = "old"\n')
    port = free_port()
    relay = f"{smtp_sink.host}:{smtp_sink.port}"
    listen = f"127.0.0.1:{port}"
    with (tmp_path / "mailgate.log").open("wb") as log:
        proc = subprocess.Popen(
            [*MAILGATE, "serve", "--config", str(conf), "--listen", listen, "--relay", relay],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        try:
            wait_for_port(port, proc)
            expected = misspelled(conf).removeprefix("mailgate: configuration error: ").strip()
            (conf / "10-add_header.toml").write_text('name = "X-Chain"\nvalue = "new"\n')
            proc.send_signal(signal.SIGHUP)
            refused = wait_for_event(tmp_path, "configuration refused")
            assert refused["error"] == expected
            send(port, "after the refused reload")
            (message,) = smtp_sink.wait_for_messages(1)
            assert message.header("X-Chain") == "old", "the old chain stays"
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    assert "Traceback" not in (tmp_path / "mailgate.log").read_text()
