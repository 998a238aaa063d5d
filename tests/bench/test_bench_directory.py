"""The directory benchmark's short run: both routes deliver every message and the table says
what the target is (the figures themselves are for `python -m tests.bench.bench_directory`)."""

from __future__ import annotations

import re

import pytest

from tests.bench.bench_directory import RULES, rules, run

pytestmark = pytest.mark.bench


def test_the_rules_compile_and_none_matches_the_recipient() -> None:
    from mailgate.plugins.rewrite.rules import RuleList, RuleSettings

    tables = re.findall(r'match = "(.*)"\nreplace = "(.*)"', rules())
    assert len(tables) == RULES
    compiled = RuleList(
        [RuleSettings(match=m.replace("\\\\", "\\"), replace=r).rule for m, r in tables],
        "recipient",
    )
    assert not compiled.apply("bob@example.org").matched
    assert compiled.apply("bob+list49-x@example.org").address == "bob-49@lists.example.org"


def test_short_run_delivers_everything() -> None:
    text = run(messages=40, repeats=1, probe=10)
    assert "FAIL" not in text and "error:" not in text
    assert "of no rewriting by msg/s (target >= 0.9" in text
