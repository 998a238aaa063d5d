"""Verdicts carry a reply that matches their kind."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate import Verdict, VerdictKind
from mailgate.verdict import format_reply


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


def test_text_with_a_carriage_return_is_refused() -> None:
    with pytest.raises(ValueError):
        Verdict.reject(550, "5.7.1", "one\r\nRCPT TO:<x>")


def test_text_of_several_lines_is_a_multi_line_reply() -> None:
    v = Verdict.reject(550, "5.7.1", "Refused by policy\nSee https://example.org/policy")
    assert v.smtp_reply() == (
        "550-5.7.1 Refused by policy\r\n550 5.7.1 See https://example.org/policy"
    )
    assert Verdict.tempfail(451, "", "a\nb").smtp_reply() == "451-a\r\n451 b"


@given(
    code=st.sampled_from([421, 450, 451, 452, 550, 553, 554]),
    lines=st.lists(st.text(st.characters(blacklist_characters="\r\n"), max_size=20), min_size=1),
)
def test_every_reply_line_carries_the_code_and_only_the_last_ends_it(
    code: int, lines: list[str]
) -> None:
    reply = format_reply(code, "", "\n".join(lines))
    sent = reply.split("\r\n")
    assert len(sent) == len(lines)
    assert all(line.startswith(f"{code}-") for line in sent[:-1])
    assert sent[-1] == f"{code} {lines[-1]}".rstrip()
    assert [line[4:] for line in sent[:-1]] == [line.rstrip() for line in lines[:-1]]


def test_accept_discard_and_quarantine_are_not_refusals() -> None:
    for v in (Verdict.accept(), Verdict.discard(), Verdict.quarantine(reason="x")):
        assert not v.is_refusal
        assert v.code == 250
