"""mailgate's spf, dkim, arc and dmarc against opendkim 2.11, opendmarc 1.4.2 and rspamd 3.4
on the same corpus, message by message (docs/authentication-differential.md).

Every disagreement must be one of the named, explained differences in `KNOWN`: a new one
fails, and so does a known one that went away or changed (update the table and the page).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mailgate import Transaction
from tests.differential import outcomes as o
from tests.differential.conftest import Run
from tests.differential.known import KNOWN

AUTHSERV_ID = "mx.pf.test"
"""What opendkim, opendmarc and rspamd (Postfix's myhostname, its ``j`` macro) write."""


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison: a check as one daemon reports it, against mailgate's result."""

    check: str  # dkim, spf, arc, dmarc
    daemon: str  # opendkim, opendmarc, rspamd
    theirs: Callable[[list[o.ResInfo]], str]
    ours: Callable[[Transaction], str]

    @property
    def key(self) -> str:
        return f"{self.check}/{self.daemon}"


def spf_of(tx: Transaction) -> str:
    return tx.results["spf"].result


def spf_as_opendmarc_says(tx: Transaction) -> str:
    """opendmarc 1.4.2 reports SPF in the DMARC library's outcomes: everything that is not
    pass, none or temperror is ``fail`` (softfail, neutral, permerror)."""
    result = spf_of(tx)
    return "fail" if result in ("softfail", "neutral", "permerror") else result


def arc_of(tx: Transaction) -> str:
    return tx.results["arc"].result


CHECKS = [
    Check("dkim", "opendkim", o.dkim_of_daemon, o.dkim_of_mailgate),
    Check("dkim", "rspamd", o.dkim_of_daemon, o.dkim_of_mailgate),
    Check("spf", "opendmarc", lambda f: o.simple_of_daemon(f, "spf"), spf_as_opendmarc_says),
    Check("spf", "rspamd", lambda f: o.simple_of_daemon(f, "spf"), spf_of),
    Check("dmarc", "opendmarc", o.dmarc_of_opendmarc, o.dmarc_of_mailgate),
    Check("dmarc", "rspamd", o.dmarc_of_rspamd, o.dmarc_of_mailgate),
    Check("arc", "rspamd", o.arc_of_rspamd, arc_of),
]


def compare(run: Run, check: Check) -> dict[str, tuple[str, str]]:
    """Case name -> (theirs, ours) for every case where `check` disagrees."""
    source = run.rspamd if check.daemon == "rspamd" else run.opendkim_opendmarc
    differ = {}
    for case in run.cases:
        delivered = source[case.name]
        assert not delivered.refused, f"{check.daemon} refused {case.name}: {delivered.refused}"
        found = o.resinfos(delivered.all("Authentication-Results"), AUTHSERV_ID)
        theirs, ours = check.theirs(found), check.ours(run.mailgate[case.name])
        if theirs != ours:
            differ[case.name] = (theirs, ours)
    return differ


def expected(check: Check) -> dict[str, tuple[str, str]]:
    """The named differences of `check`, by case."""
    return {
        case: pair
        for difference in KNOWN
        for (name, daemon, case), pair in difference.differs.items()
        if (name, daemon) == (check.check, check.daemon)
    }


def test_the_corpus_covers_what_it_must(differential: Run) -> None:
    names = [case.name for case in differential.cases]
    assert len(names) == len(set(names)) >= 60
    kinds = Counter(name.split("-")[0] for name in names)
    assert kinds["dkim"] >= 25 and kinds["spf"] >= 10 and kinds["dmarc"] >= 10
    assert kinds["arc"] >= 8
    ours = {
        check: Counter(tx.results[check].result for tx in differential.mailgate.values())
        for check in ("spf", "dkim", "arc", "dmarc")
    }
    assert set(ours["spf"]) >= {
        "pass",
        "fail",
        "softfail",
        "neutral",
        "none",
        "temperror",
        "permerror",
    }
    assert set(ours["dkim"]) >= {
        "pass",
        "fail",
        "none",
        "permerror",
        "temperror",
        "policy",
        "neutral",
    }
    assert set(ours["arc"]) >= {"pass", "fail", "none"}
    assert set(ours["dmarc"]) >= {"pass", "fail", "none"}
    policies = {tx.results["dmarc"].details.get("policy") for tx in differential.mailgate.values()}
    assert policies >= {"none", "quarantine", "reject"}


def test_every_known_difference_names_a_case_and_an_rfc(differential: Run) -> None:
    names = {case.name for case in differential.cases}
    keys = {check.key for check in CHECKS}
    for difference in KNOWN:
        assert difference.rfc.startswith("RFC ") and difference.why, difference.name
        for check, daemon, case in difference.differs:
            assert case in names and f"{check}/{daemon}" in keys, (difference.name, case)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.key)
def test_mailgate_agrees_or_the_difference_is_known(differential: Run, check: Check) -> None:
    assert compare(differential, check) == expected(check)


def test_agreement_table(differential: Run, capsys: pytest.CaptureFixture[str]) -> None:
    """The table of docs/authentication-differential.md (``pytest -s`` prints it)."""
    total = len(differential.cases)
    rows = []
    for check in CHECKS:
        differ = compare(differential, check)
        rows.append(
            f"| {check.check} | {check.daemon} | {total - len(differ)}/{total} | {len(differ)} |"
        )
    with capsys.disabled():
        print(f"\n{total} messages in {differential.seconds:.1f}s")
        print("| check | against | agree | explained differences |\n|---|---|---|---|")
        print("\n".join(rows))
    assert differential.seconds < 120
