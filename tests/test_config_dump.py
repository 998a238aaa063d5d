"""``mailgate config dump``: every setting with its default, file by file, and only the changed
ones with ``--non-default``; what it prints reads back as the same configuration."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from mailgate.config_dump import dump
from mailgate.loader import load_config
from tests.test_cli import MAILGATE

CORE = """\
[mailgate]
hostname = "mx.example.org"

[[listener]]
address = "127.0.0.1:2626"
max_recipients = 50

[[listener]]
type = "milter"
address = "127.0.0.1:8899"

[relay_control]
networks = ["192.0.2.0/24"]
domains = ["example.org"]
"""
ADD_HEADER = """\
when = 'client.ip != "203.0.113.9"'
timeout = 5
name = "X-Dump"
value = [{ if = 'client.ip == "192.0.2.1"', then = "a \\"quoted\\" one" }, { else = "b" }]
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    (directory / "mailgate.toml").write_text(CORE)
    (directory / "20-add_header.toml").write_text(ADD_HEADER)
    (directory / "80-spf.toml").write_text('reject = ["fail", "softfail"]\n')
    (directory / "90-dmarc.toml").write_text("enabled = false\n")
    return directory


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAILGATE, *args], capture_output=True, text=True, timeout=60)


def split_files(text: str) -> dict[str, str]:
    """The dump's parts by the file they came from (each part starts ``# FILE``)."""
    parts: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        header = re.match(r"# (\S+\.toml)(?::|$)", line)
        if header:
            current = Path(header.group(1)).name
            parts.setdefault(current, "")
            continue
        if current is not None:
            parts[current] += line
    return parts


def test_non_default_lists_just_what_the_site_changed(conf: Path) -> None:
    result = run("config", "dump", "--config", str(conf), "--non-default")
    assert result.returncode == 0, result.stderr
    parts = split_files(result.stdout)
    core = tomllib.loads(parts["mailgate.toml"])
    assert core["mailgate"] == {"hostname": "mx.example.org"}
    assert core["listener"] == [
        {"type": "smtp", "address": "127.0.0.1:2626", "max_recipients": 50},
        {"type": "milter", "address": "127.0.0.1:8899"},
    ]
    assert core["relay_control"] == {"networks": ["192.0.2.0/24"], "domains": ["example.org"]}
    assert "logging" not in core and "relay" not in core, "nothing there differs"
    assert tomllib.loads(parts["80-spf.toml"]) == {"reject": ["fail", "softfail"]}
    header = tomllib.loads(parts["20-add_header.toml"])
    assert header["when"] == 'client.ip != "203.0.113.9"'
    assert header["timeout"] == 5.0
    assert header["value"] == [
        {"if": 'client.ip == "192.0.2.1"', "then": 'a "quoted" one'},
        {"else": "b"},
    ]
    assert "90-dmarc.toml: plugin dmarc, enabled = false" in result.stdout


def test_the_full_dump_shows_every_default(conf: Path) -> None:
    result = run("config", "dump", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    core = tomllib.loads(split_files(result.stdout)["mailgate.toml"])
    assert core["relay"]["address"] == "127.0.0.1:25"
    assert core["relay"]["pool_size"] == 16
    assert core["listener"][0]["max_message_size"] == 52428800
    assert core["listener"][0]["max_recipients"] == 50
    spf = tomllib.loads(split_files(result.stdout)["80-spf.toml"])
    assert spf["on_error"] == "tempfail" and spf["concurrent"] is False
    assert "# when = (unset)" in result.stdout


def test_what_it_prints_loads_back_as_the_same_configuration(conf: Path, tmp_path: Path) -> None:
    first = dump(load_config(conf))
    again = tmp_path / "again"
    again.mkdir()
    for name, text in split_files(first).items():
        (again / name).write_text(text)
    (again / "90-dmarc.toml").write_text("enabled = false\n")
    second = dump(load_config(again))
    assert second.replace(str(again), "DIR") == first.replace(str(conf), "DIR")


def test_a_bad_configuration_is_refused_not_dumped(conf: Path) -> None:
    (conf / "80-spf.toml").write_text('reject = "sometimes"\n')
    result = run("config", "dump", "--config", str(conf))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "80-spf.toml: reject" in result.stderr
