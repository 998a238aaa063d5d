"""A third-party plugin, end to end: pip-install contrib's example, enable it, see it act."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink
from tests.test_cli import MAILGATE, wait_for_port

EXAMPLE = Path(__file__).parent.parent / "contrib" / "mailgate-plugin-example"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Built from a copy, so the build leaves nothing in the source tree.
    source = tmp_path_factory.mktemp("example") / "pkg"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [*PIP, "install", "--no-deps", "--no-build-isolation", str(source)],
        check=True,
        timeout=120,
    )
    yield
    subprocess.run([*PIP, "uninstall", "-y", "mailgate-plugin-example"], check=True, timeout=60)


def test_mailgate_plugins_lists_it(example_installed: None, tmp_path: Path) -> None:
    (tmp_path / "30-subject_tag.toml").write_text('tag = "[X]"\n')
    result = subprocess.run(
        [*MAILGATE, "plugins", "--config", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "mailgate-plugin-example 0.1.0" in result.stdout
    # relay_control and sender_auth are built in and always come first
    assert "3. subject_tag" in result.stdout


def test_example_plugin_acts_on_relayed_mail(
    example_installed: None, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    (tmp_path / "30-subject_tag.toml").write_text(
        'tag = [{ if = \'sender.domain == "partner.test"\', then = "[PARTNER]" },'
        ' { else = "[EXTERNAL]" }]\n'
        'refuse_recipients = "^noreply@"\n'
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            *MAILGATE,
            "serve",
            "--config",
            str(tmp_path),
            "--listen",
            f"127.0.0.1:{port}",
            "--relay",
            f"{smtp_sink.host}:{smtp_sink.port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            refused = client.sendmail(
                "a@example.net",
                ["b@example.org", "noreply@example.org"],
                b"From: a@example.net\r\nSubject: Hello\r\n\r\nhi\r\n",
            )
            assert refused == {"noreply@example.org": (550, b"5.7.1 Recipient refused by policy")}
            client.sendmail("c@partner.test", ["b@example.org"], b"Subject: Offer\r\n\r\nhi\r\n")
        # The sink names its dump files by the second, so the arrival order is not kept.
        by_sender = {m.mail_from: m for m in smtp_sink.wait_for_messages(2)}
        first, second = by_sender["a@example.net"], by_sender["c@partner.test"]
        assert first.rcpts == ("b@example.org",)
        assert first.header("Subject") == "[EXTERNAL] Hello"
        assert second.header("Subject") == "[PARTNER] Offer"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_the_example_passes_its_own_tests_from_its_own_directory(example_installed: None) -> None:
    # As its author runs them: pytest in the package's directory, with mailgate's kit (the
    # mailgate_* fixtures arrive through mailgate's pytest11 entry point, not a conftest here).
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b7 passed\b", result.stdout), result.stdout


def test_the_guide_shows_exactly_the_example_plugin() -> None:
    guide = (EXAMPLE.parent.parent / "docs" / "writing-plugins.md").read_text()
    shown = re.search(r"```python\n# mailgate_plugin_example/__init__\.py\n(.*?)```", guide, re.S)
    assert shown is not None, "the guide's first example names the file it shows"
    code = (EXAMPLE / "mailgate_plugin_example" / "__init__.py").read_text()
    assert shown.group(1) == code
