"""The aggregate report as built: valid against RFC 7489's schema, read alike by parsedmarc."""

from __future__ import annotations

import gzip
from ipaddress import ip_address

import pytest

from mailgate.plugins.reports.aggregate import Metadata, ReportTooLarge, build, report_ip
from mailgate.plugins.reports.mail import ReportMail
from mailgate.plugins.reports.records import Group
from tests.plugins.reports.helpers import assert_valid, attachment, counts, parsed_by_parsedmarc

POLICY = {
    "domain": "example.com",
    "adkim": "r",
    "aspf": "s",
    "p": "reject",
    "sp": "none",
    "pct": 100,
    "fo": "1",
}
METADATA = Metadata(
    "Example & Co",
    "dmarc@example.net",
    "https://example.net/dmarc",
    "1733270400abc",
    1733270400,
    1733356799,
)


def group(ip: str, count: int, **changes: object) -> Group:
    values: dict[str, object] = {
        "source_ip": ip,
        "count": count,
        "disposition": "none",
        "dkim_aligned": "pass",
        "spf_aligned": "fail",
        "reasons": [],
        "header_from": "example.com",
        "envelope_from": "bounces.example.com",
        "dkim": [["example.com", "sel", "pass"]],
        "spf": ["bounces.example.com", "mfrom", "softfail"],
    }
    values.update(changes)
    return Group(**values)  # type: ignore[arg-type]


GROUPS = [
    group("192.0.2.1", 7),
    group(
        "192.0.2.1",
        2,
        disposition="reject",
        dkim_aligned="fail",
        dkim=[["other.example", "s1", "fail"], ["example.com", "", "permerror"]],
    ),
    group(
        "2001:db8::5",
        3,
        disposition="none",
        dkim_aligned="fail",
        reasons=[["sampled_out", "pct=10"], ["local_policy", "never_enforce <x>"]],
    ),
    group("198.51.100.9", 1, dkim=[], spf=None, envelope_from=""),
]


def test_report_validates_against_the_rfc_7489_schema() -> None:
    report, records, messages = build(METADATA, POLICY, GROUPS, 1 << 20)
    root = assert_valid(gzip.decompress(report))
    assert (records, messages) == (4, 13)
    assert root.findtext("report_metadata/org_name") == "Example & Co"
    assert root.findtext("policy_published/aspf") == "s"
    assert root.find("policy_published/fo") is None  # not in RFC 7489's schema
    assert counts(root) == {
        ("192.0.2.1", "none", "pass", "fail"): 7,
        ("192.0.2.1", "reject", "fail", "fail"): 2,
        ("2001:0db8:0000:0000:0000:0000:0000:0005", "none", "fail", "fail"): 3,
        ("198.51.100.9", "none", "pass", "fail"): 1,
    }
    no_spf = root.findall("record")[3]
    assert no_spf.findtext("auth_results/spf/result") == "none"


def test_parsedmarc_reads_the_mail_with_the_same_counts() -> None:
    report, _, _ = build(METADATA, POLICY, GROUPS, 1 << 20)
    mail = ReportMail(
        "Example & Co",
        "dmarc@example.net",
        "mx.example.net",
        "example.com",
        METADATA.report_id,
        METADATA.begin,
        METADATA.end,
    )
    raw = mail.aggregate("owner@example.com", report, 4, 13)
    name, xml, message = attachment(raw)
    assert name == "mx.example.net!example.com!1733270400!1733356799.xml.gz"
    assert message["Subject"] == (
        "Report Domain: example.com Submitter: mx.example.net "
        "Report-ID: <1733270400abc@mx.example.net>"
    )
    assert_valid(xml)
    parsed = parsed_by_parsedmarc(raw)
    assert parsed["report_metadata"]["report_id"] == "1733270400abc"
    assert parsed["policy_published"]["domain"] == "example.com"
    assert sum(r["count"] for r in parsed["records"]) == 13
    found = [(str(ip_address(r["source"]["ip_address"])), r["count"]) for r in parsed["records"]]
    assert sorted(found) == sorted(
        [("192.0.2.1", 7), ("192.0.2.1", 2), ("2001:db8::5", 3), ("198.51.100.9", 1)]
    )


def test_a_report_past_the_size_limit_stops_being_built() -> None:
    many = [group(f"10.0.{i // 256}.{i % 256}", 1) for i in range(3000)]
    with pytest.raises(ReportTooLarge):
        build(METADATA, POLICY, many, 4096)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001"),
    ],
)
def test_source_addresses_take_the_schemas_form(given: str, shown: str) -> None:
    assert report_ip(given) == shown
