"""The documentation site (mkdocs, --strict) and the man page, built as ``make docs`` and
``make man`` build them."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mailgate import hookspecs
from mailgate.cli import parser

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MKDOCS, "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=config.parent,
    )


def test_the_site_builds_strict_with_contrib_and_the_hook_reference(tmp_path: Path) -> None:
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    site = tmp_path / "site"
    assert (site / "contrib" / "postfix" / "milter.html").is_file()
    index = (site / "index.html").read_text()
    assert 'href="contrib/postfix/milter.html"' in index, "a link into contrib/ works on the site"
    reference = html.unescape(
        re.sub(r"<[^>]+>", "", (site / "reference" / "hooks.html").read_text())
    )
    specs = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "mailgate_spec")]
    assert len(specs) >= 10
    for name in specs:
        assert f"def {name}(session: Session" in reference, name
    assert "Check credentials given with AUTH" in reference, "the docstrings are there"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copytree(ROOT / "contrib", copy / "contrib", ignore=shutil.ignore_patterns("build"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "relay.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    result = build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_the_man_page_lists_every_command_and_option_and_renders_cleanly(tmp_path: Path) -> None:
    page = tmp_path / "mailgate.1"
    written = subprocess.run(
        [sys.executable, "-m", "mailgate.manpage"], capture_output=True, text=True, timeout=60
    )
    assert written.returncode == 0, written.stderr
    page.write_text(written.stdout)
    groff = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True
    )
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    shown = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P", "-c", str(page)], capture_output=True, text=True
    ).stdout
    plain = re.sub(r".\x08", "", shown)
    commands = _commands(parser())
    assert {"serve", "check-config", "config dump", "dkim keygen", "try"} <= set(commands)
    for name, options in commands.items():
        assert re.search(rf"^ {{3}}{re.escape(name)}$", plain, re.M), f"no section for {name}"
        for option in options:
            assert option in plain, f"{name}: {option} missing"


def _commands(top: object) -> dict[str, list[str]]:
    import argparse

    found: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                    if nested:
                        walk(sub, f"{prefix}{name} ")
                    else:
                        options = [
                            a.option_strings[0]
                            for a in sub._actions
                            if a.option_strings and a.help != argparse.SUPPRESS
                        ]
                        found[f"{prefix}{name}"] = options

    assert isinstance(top, argparse.ArgumentParser)
    walk(top, "")
    return found
