"""auth_file: scrypt hashes, the login:hash file, reloading it, and the hash command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.plugins.auth_file import AuthFile, AuthFileSettings, ScryptHash, parse_users

FAST = {"n": 1024, "r": 8, "p": 1}  # a cheap cost for tests; the format is the same


def line(login: str, secret: str) -> str:
    return f"{login}:{ScryptHash.make(secret, **FAST)}\n"


def test_hash_is_self_describing_and_verifies() -> None:
    hashed = ScryptHash.make("s3cret", **FAST)
    text = str(hashed)
    assert text.startswith("$scrypt$n=1024,r=8,p=1$")
    parsed = ScryptHash.parse(text)
    assert parsed == hashed
    assert parsed.verify("s3cret")
    assert not parsed.verify("s3cret ")


@pytest.mark.parametrize(
    "text",
    [
        "$scrypt$n=1000,r=8,p=1$c2FsdA$" + "A" * 43,  # n not a power of two
        "$scrypt$n=4194304,r=8,p=1$c2FsdA$" + "A" * 43,  # n too large
        "$scrypt$n=1024,r=8,p=1$c2FsdA$QUJD",  # key too short
        "$2b$12$abcdefghijklmnopqrstuv",  # bcrypt: not this format
        "plaintext",
    ],
)
def test_unusable_hashes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ScryptHash.parse(text)


def test_bad_lines_are_skipped_and_comments_ignored() -> None:
    text = "# users\n\n" + line("alice@example.org", "a") + "bob:plaintext\n" + line("c:d", "x")
    users = parse_users(text)
    assert set(users) == {"alice@example.org", "c:d"}


async def test_known_login_is_checked_unknown_login_has_no_opinion(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(line("alice@example.org", "s3cret"))
    plugin = AuthFile(AuthFileSettings(path=str(path)))
    assert await plugin.authenticate("alice@example.org", "s3cret") is True
    assert await plugin.authenticate("alice@example.org", "wrong") is False
    assert await plugin.authenticate("mallory@example.org", "s3cret") is None


async def test_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(line("alice", "one"))
    plugin = AuthFile(AuthFileSettings(path=str(path)))
    assert await plugin.authenticate("bob", "two") is None
    path.write_text(line("alice", "one") + line("bob", "two"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert await plugin.authenticate("bob", "two") is True


def test_a_missing_file_or_path_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="required"):
        AuthFile(AuthFileSettings())
    with pytest.raises(ValueError, match="cannot read"):
        AuthFile(AuthFileSettings(path=str(tmp_path / "nope")))


def test_hash_command_prints_a_line_that_verifies() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailgate.plugins.auth_file", "hash", "alice@example.org"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    login, _, hashed = result.stdout.strip().rpartition(":")
    assert login == "alice@example.org"
    assert hashed.startswith("$scrypt$n=16384,r=8,p=1$")
    assert ScryptHash.parse(hashed).verify("correct horse")
    assert "correct horse" not in result.stdout + result.stderr
