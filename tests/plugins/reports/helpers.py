"""What the reports tests share: the RFC 7489 schema, and reading report mail the way a
domain owner's tools do (parsedmarc, offline)."""

from __future__ import annotations

import email
import email.policy
import gzip
from functools import cache
from pathlib import Path
from typing import Any

import parsedmarc
from lxml import etree

XSD = Path(__file__).parent / "rfc7489-appendix-c.xsd"


@cache
def schema() -> etree.XMLSchema:
    """The RFC 7489 Appendix C schema."""
    return etree.XMLSchema(etree.parse(str(XSD)))


def assert_valid(xml: bytes) -> etree._Element:
    """Validate `xml` against the schema; its root element."""
    root = etree.fromstring(xml)
    s = schema()
    assert s.validate(root), "\n".join(str(e) for e in s.error_log)
    return root


def attachment(raw: bytes) -> tuple[str, bytes, Any]:
    """The report mail's attachment: its file name, the XML (un-gzipped), the message."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    [part] = [p for p in message.walk() if p.get_content_disposition() == "attachment"]
    assert part.get_content_type() == "application/gzip"
    return part.get_filename() or "", gzip.decompress(part.get_content()), message


def parsed_by_parsedmarc(raw: bytes) -> dict[str, Any]:
    """The report as parsedmarc reads the whole mail, with no network."""
    found = parsedmarc.parse_report_email(raw, offline=True, always_use_local_files=True)
    assert found["report_type"] == "aggregate"
    report: dict[str, Any] = found["report"]
    return report


def counts(root: etree._Element) -> dict[tuple[str, str, str, str], int]:
    """Messages per (source, disposition, dkim, spf) in a report."""
    found: dict[tuple[str, str, str, str], int] = {}
    for record in root.iter("record"):
        row = record.find("row")
        assert row is not None
        key = (
            row.findtext("source_ip", ""),
            row.findtext("policy_evaluated/disposition", ""),
            row.findtext("policy_evaluated/dkim", ""),
            row.findtext("policy_evaluated/spf", ""),
        )
        found[key] = found.get(key, 0) + int(row.findtext("count", "0"))
    return found
