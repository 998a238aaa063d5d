"""The shipped conf.d files for the scanners load, stay off by default, and switch on."""

from __future__ import annotations

import math
from pathlib import Path

from mailgate import Session
from mailgate.loader import load_config
from mailgate.plugins.clamav import ClamavPlugin
from mailgate.plugins.spamassassin import SpamassassinPlugin

CONF_D = Path(__file__).resolve().parents[2] / "conf.d"
FILES = ("50-clamav.toml", "60-spamassassin.toml")


def copy_conf(tmp_path: Path, enable: bool) -> Path:
    for name in FILES:
        text = (CONF_D / name).read_text()
        if enable:
            text = text.replace("enabled = false", "enabled = true", 1)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_shipped_files_are_disabled(tmp_path: Path) -> None:
    config = load_config(copy_conf(tmp_path, enable=False))
    assert not {"clamav", "spamassassin"} & {p.name for p in config.chain}


def test_enabled_files_build_concurrent_plugins_in_file_order(tmp_path: Path) -> None:
    config = load_config(copy_conf(tmp_path, enable=True))
    names = [p.name for p in config.chain]
    assert names.index("clamav") < names.index("spamassassin")
    pipeline = config.pipeline()
    by_name = {p.name: p for p in pipeline.plugins}
    assert by_name["clamav"].concurrent and by_name["spamassassin"].concurrent
    av = by_name["clamav"].instance
    spam = by_name["spamassassin"].instance
    assert isinstance(av, ClamavPlugin) and isinstance(spam, SpamassassinPlugin)
    assert av.settings.action == "reject"
    assert spam.settings.quarantine_threshold.value(Session("192.0.2.1")) == math.inf


def test_dynamic_threshold_from_toml(tmp_path: Path) -> None:
    copy_conf(tmp_path, enable=True)
    path = tmp_path / "60-spamassassin.toml"
    text = path.read_text().replace(
        "reject_threshold = 15.0",
        'reject_threshold = [{ if = "!authenticated", then = 10.0 }, { else = 20.0 }]',
    )
    path.write_text(text)
    spam = {p.name: p for p in load_config(tmp_path).pipeline().plugins}["spamassassin"].instance
    assert isinstance(spam, SpamassassinPlugin)
    anonymous = Session("192.0.2.1")
    known = Session("192.0.2.1", auth_login="alice")
    assert spam.settings.reject_threshold.value(anonymous) == 10.0
    assert spam.settings.reject_threshold.value(known) == 20.0
