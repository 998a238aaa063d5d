"""Verdicts carry a reply that matches their kind."""

import pytest

from mailgate import Verdict, VerdictKind


def test_reject_keeps_the_plugins_own_code_status_and_text() -> None:
    v = Verdict.reject(554, "5.7.1", "Virus found: Eicar")
    assert v.kind is VerdictKind.REJECT
    assert v.smtp_reply() == "554 5.7.1 Virus found: Eicar"
    assert v.is_refusal


def test_tempfail_defaults_to_451() -> None:
    assert Verdict.tempfail().smtp_reply().startswith("451 4.7.1 ")


@pytest.mark.parametrize(
    ("factory", "code", "status"),
    [
        (Verdict.reject, 451, "4.7.1"),
        (Verdict.tempfail, 550, "5.7.1"),
        (Verdict.reject, 550, "4.7.1"),
        (Verdict.reject, 55, "5.7.1"),
    ],
)
def test_codes_that_contradict_the_kind_are_refused(factory, code, status) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        factory(code, status, "x")


def test_text_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError):
        Verdict.reject(550, "5.7.1", "one\r\nRCPT TO:<x>")


def test_accept_discard_and_quarantine_are_not_refusals() -> None:
    for v in (Verdict.accept(), Verdict.discard(), Verdict.quarantine(reason="x")):
        assert not v.is_refusal
        assert v.code == 250
