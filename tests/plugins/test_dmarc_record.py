"""The DMARC record parser (with hypothesis), organizational domains and alignment, and the
pure steps of an evaluation (sampling, which of p/sp/np applies)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.plugins.dmarc.domains import aligned, organizational_domain
from mailgate.plugins.dmarc.evaluation import Evaluation, requested_policy, sample
from mailgate.plugins.dmarc.record import (
    POLICIES,
    DmarcRecord,
    RecordError,
    is_dmarc,
    parse_record,
)

# -- the record ----------------------------------------------------------------------------------


def test_a_full_record() -> None:
    record = parse_record(
        "v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; aspf=s; pct=50; t=n;"
        " rua=mailto:agg@example.com,mailto:x@example.net!10m; ruf=mailto:f@example.com;"
        " fo=1:d; ri=3600"
    )
    assert record == DmarcRecord(
        p="reject",
        sp="quarantine",
        np="reject",
        adkim="s",
        aspf="s",
        pct=50,
        rua=("mailto:agg@example.com", "mailto:x@example.net!10m"),
        ruf=("mailto:f@example.com",),
        fo="1:d",
        ri=3600,
    )


def test_defaults() -> None:
    record = parse_record("v=DMARC1; p=none")
    assert (record.sp, record.np, record.adkim, record.aspf) == (None, None, "r", "r")
    assert record.pct == 100
    assert not record.testing and record.sampling_pct == 100


@pytest.mark.parametrize(
    "text",
    ["v=DMARC2; p=none", "v=dmarc1; p=none", "p=none; v=DMARC1", "v=spf1 -all", "", "v=DMARC10"],
)
def test_not_a_dmarc_record(text: str) -> None:
    assert not is_dmarc(text)
    with pytest.raises(RecordError, match="does not start with v=DMARC1"):
        parse_record(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("v=DMARC1", "no valid p tag and no rua"),
        ("v=DMARC1; p=bounce", "no valid p tag and no rua"),
        ("v=DMARC1; p=reject; sp=bounce", "an invalid sp tag and no rua"),
        ("v=DMARC1; rua=not a uri", "no valid p tag and no rua"),
    ],
)
def test_a_record_without_a_policy_is_an_error(text: str, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        parse_record(text)


def test_no_valid_p_with_a_rua_is_p_none() -> None:
    """RFC 7489 6.6.3 step 6: monitor, so the domain still gets its reports."""
    record = parse_record("v=DMARC1; p=bounce; rua=mailto:d@example.com")
    assert record.p == "none" and record.rua == ("mailto:d@example.com",)
    assert any("treated as p=none" in n for n in record.notes)


@pytest.mark.parametrize(
    ("tag", "field", "default"),
    [("adkim=x", "adkim", "r"), ("aspf=relaxed", "aspf", "r"), ("pct=101", "pct", 100),
     ("pct=-1", "pct", 100), ("pct=5.5", "pct", 100), ("np=bounce", "np", None),
     ("t=maybe", "testing", False), ("ri=soon", "ri", 86400)],
)  # fmt: skip
def test_a_bad_tag_value_gives_the_default(tag: str, field: str, default: object) -> None:
    record = parse_record(f"v=DMARC1; p=reject; {tag}")
    assert getattr(record, field) == default
    assert record.notes  # said why, for the log


def test_testing_samples_nothing() -> None:
    record = parse_record("v=DMARC1; p=reject; t=y")
    assert record.testing and record.pct == 100 and record.sampling_pct == 0


def test_unknown_tags_and_junk_are_ignored_and_the_first_of_a_tag_counts() -> None:
    record = parse_record("v=DMARC1; p=quarantine; psd=n; foo; x-bar=1; p=reject; ;;")
    assert record.p == "quarantine"


def test_names_and_values_are_case_insensitive_but_dmarc1_is_not() -> None:
    assert parse_record("v=DMARC1; P=Reject; ADKIM=S").adkim == "s"
    assert parse_record("v = DMARC1 ;p = reject").p == "reject"


policies = st.sampled_from(POLICIES)
spaces = st.sampled_from(["", " ", "  ", "\t"])


uris = st.from_regex(r"mailto:[a-z]{1,8}@[a-z]{1,8}\.test", fullmatch=True)


@st.composite
def records(draw: st.DrawFn) -> tuple[DmarcRecord, str]:
    """A record and one of the many ways to write it."""
    record = DmarcRecord(
        p=draw(policies),
        sp=draw(st.none() | policies),
        np=draw(st.none() | policies),
        adkim=draw(st.sampled_from(["r", "s"])),
        aspf=draw(st.sampled_from(["r", "s"])),
        pct=draw(st.integers(0, 100)),
        testing=draw(st.booleans()),
        rua=tuple(draw(st.lists(uris, max_size=3))),
    )
    tags = [f"p={record.p}", f"adkim={record.adkim}", f"aspf={record.aspf}", f"pct={record.pct}"]
    tags.append(f"t={'y' if record.testing else 'n'}")
    tags += [f"sp={record.sp}"] if record.sp else []
    tags += [f"np={record.np}"] if record.np else []
    tags += [f"rua={','.join(record.rua)}"] if record.rua else []
    tags += draw(st.lists(st.from_regex(r"x[a-z]{0,5}=[a-z0-9]{0,5}", fullmatch=True), max_size=2))
    tags = draw(st.permutations(tags))
    upper = draw(st.booleans())
    written = [(t.upper() if upper and not t.startswith("rua") else t) for t in tags]
    sep = draw(spaces) + ";" + draw(spaces)
    text = "v=DMARC1" + sep + sep.join(written) + draw(st.sampled_from(["", ";", "; "]))
    return record, text


@given(records())
def test_any_spelling_of_a_record_parses_to_it(case: tuple[DmarcRecord, str]) -> None:
    record, text = case
    assert parse_record(text) == record


@given(st.text(max_size=200))
def test_any_text_either_parses_or_is_a_record_error(text: str) -> None:
    try:
        record = parse_record(text)
    except RecordError:
        return
    assert is_dmarc(text)
    assert record.p in POLICIES and 0 <= record.pct <= 100


@given(st.text(alphabet=st.sampled_from("v=DMARC1;p =rejctsqua,ntio:\t"), max_size=60))
def test_text_close_to_a_record_either_parses_or_is_a_record_error(text: str) -> None:
    try:
        record = parse_record("v=DMARC1;" + text)
    except RecordError as exc:
        assert "no rua" in str(exc)
        return
    assert record.p in POLICIES and record.adkim in ("r", "s")


# -- organizational domains and alignment --------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("a.b.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("Mail.Example.COM.", "example.com"),
        ("com", "com"),
        ("x.y.example.test", "example.test"),  # an unlisted TLD: the default rule "*"
        ("a.b.github.io", "b.github.io"),  # the private section counts
        ("x.bücher.de", "xn--bcher-kva.de"),
    ],
)
def test_organizational_domain(domain: str, organizational: str) -> None:
    assert organizational_domain(domain) == organizational


@pytest.mark.parametrize(
    ("author", "other", "relaxed", "strict"),
    [
        ("example.co.uk", "a.b.example.co.uk", True, False),
        ("a.b.example.co.uk", "example.co.uk", True, False),
        ("a.example.co.uk", "b.example.co.uk", True, False),
        ("example.co.uk", "EXAMPLE.co.uk.", True, True),
        ("example.co.uk", "co.uk", False, False),
        ("example.com", "com", False, False),
        ("example.co.uk", "example.uk", False, False),
        ("a.github.io", "b.github.io", False, False),
        ("example.com", "", False, False),
        ("example.com", "notexample.com", False, False),
        ("bücher.de", "xn--bcher-kva.de", True, True),  # U-labels and A-labels are one name
        ("mail.BÜCHER.de", "xn--bcher-kva.de", True, False),
        ("example.com", "foo..example.com", False, False),  # not a domain name
    ],
)
def test_alignment(author: str, other: str, relaxed: bool, strict: bool) -> None:
    assert aligned(author, other, "r") is relaxed
    assert aligned(author, other, "s") is strict


# -- which policy, and sampling ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "at_org", "nonexistent", "policy"),
    [
        ("v=DMARC1; p=reject; sp=none; np=quarantine", False, True, ("reject", "p")),
        ("v=DMARC1; p=reject; sp=none; np=quarantine", True, False, ("none", "sp")),
        ("v=DMARC1; p=reject; sp=none; np=quarantine", True, True, ("quarantine", "np")),
        ("v=DMARC1; p=reject; sp=none", True, True, ("none", "sp")),
        ("v=DMARC1; p=reject", True, True, ("reject", "p")),
    ],
)
def test_requested_policy(text: str, at_org: bool, nonexistent: bool, policy: object) -> None:
    record = parse_record(text)
    assert (
        requested_policy(record, at_organizational_domain=at_org, nonexistent=nonexistent) == policy
    )


def failing(disposition: str) -> Evaluation:
    e = Evaluation("192.0.2.1", "example.com", "example.com", None, [], result="fail")
    e.disposition = disposition  # type: ignore[assignment]
    return e


@pytest.mark.parametrize(
    ("text", "draw", "disposition", "reason"),
    [
        ("v=DMARC1; p=reject; pct=0", 0.0, "quarantine", "pct=0"),
        ("v=DMARC1; p=reject; t=y", 0.0, "quarantine", "t=y"),
        ("v=DMARC1; p=quarantine; pct=0", 0.0, "none", "pct=0"),
        ("v=DMARC1; p=reject; pct=30", 0.29, "reject", None),
        ("v=DMARC1; p=reject; pct=30", 0.30, "quarantine", "pct=30"),
        ("v=DMARC1; p=reject", 0.99, "reject", None),
    ],
)
def test_sampling(text: str, draw: float, disposition: str, reason: str | None) -> None:
    record = parse_record(text)
    e = failing(record.p)
    sample(e, record, lambda: draw)
    assert e.disposition == disposition
    assert [(r.type, r.comment) for r in e.reasons] == ([("sampled_out", reason)] if reason else [])


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.builds(
    lambda names, suffix: ".".join([*names, suffix]),
    st.lists(labels, min_size=1, max_size=4),
    st.sampled_from(["com", "co.uk", "test", "github.io"]),
)


@given(domains, domains)
def test_alignment_is_symmetric_and_strict_implies_relaxed(a: str, b: str) -> None:
    assert aligned(a, b, "r") is aligned(b, a, "r")
    assert aligned(a, b, "s") is (a == b)
    if aligned(a, b, "s"):
        assert aligned(a, b, "r")
    assert aligned(a, b, "r") is (organizational_domain(a) == organizational_domain(b))


@given(domains, st.lists(labels, min_size=1, max_size=3))
def test_a_subdomain_is_aligned_relaxed_and_not_strict(domain: str, more: list[str]) -> None:
    subdomain = ".".join([*more, domain])
    assert aligned(domain, subdomain, "r") and aligned(subdomain, domain, "r")
    assert not aligned(domain, subdomain, "s")


@given(st.lists(labels, min_size=1, max_size=3), st.sampled_from(["com", "co.uk", "github.io"]))
def test_a_public_suffix_never_aligns(names: list[str], suffix: str) -> None:
    """``d=co.uk`` is not ``example.co.uk``'s, whatever the mode (DESIGN.md's warning)."""
    domain = ".".join([*names, suffix])
    assert not aligned(domain, suffix, "r") and not aligned(suffix, domain, "r")
