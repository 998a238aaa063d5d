"""The shipped conf.d files of the directory plugins load once enabled and pointed at a real
server (they are shipped disabled), and the hook is documented in the contract."""

from __future__ import annotations

import re
from pathlib import Path

from mailgate.contract import hook_arguments
from mailgate.loader import load_config
from tests.peers.slapd import Slapd

CONF_D = Path(__file__).resolve().parents[2] / "conf.d"
FILES = (
    "05-directory_ldap.toml",
    "06-directory_sql.toml",
    "31-directory_auth.toml",
    "72-recipient_verify.toml",
)


def test_shipped_files_are_disabled_and_load_when_enabled(tmp_path: Path, slapd: Slapd) -> None:
    for name in FILES:
        text = (CONF_D / name).read_text()
        assert re.search(r"^enabled = false$", text, re.M), name
        text = text.replace("enabled = false", "enabled = true")
        text = text.replace("ldap://127.0.0.1:389/", slapd.url)
        text = text.replace("sqlite:////var/lib/mailgate/users.db", f"sqlite:///{tmp_path}/u.db")
        (tmp_path / name).write_text(text)
    names = [p.name for p in load_config(tmp_path).pipeline().plugins]
    assert names == [
        "relay_control",
        "sender_auth",
        "directory_ldap",
        "directory_sql",
        "directory_auth",
        "recipient_verify",
    ]


def test_the_hook_is_in_the_contract() -> None:
    assert hook_arguments()["directory"] == ("session", "question", "subject")
