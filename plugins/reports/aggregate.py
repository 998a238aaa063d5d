"""The aggregate report (RFC 7489 7.2 and Appendix C): XML written straight into gzip.

`AggregateWriter` takes the metadata and the published policy, then the records one by one,
so a report of many records never exists whole in memory uncompressed. The XML has no
namespace, as the large receivers send it and as every reader expects; element order and
content follow the Appendix C schema (``policy_published`` has no ``np``, ``fo`` or ``t``:
RFC 7489 does not know them), which the tests check with an XSD validator.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from mailgate.plugins.reports.records import Group


class ReportTooLarge(Exception):
    """The gzipped report grew past the size allowed."""


@dataclass(frozen=True, slots=True)
class Metadata:
    """``report_metadata``: who reports, the report id and the period."""

    org_name: str
    email: str
    extra_contact_info: str
    report_id: str
    begin: int
    end: int


def report_ip(address: str) -> str:
    """The source address as the schema's ``IPAddress`` pattern takes it: IPv4 dotted, IPv6
    with all eight groups (the pattern has no ``::``); anything else as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.exploded if ip.version == 6 else str(ip)


def _element(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


class AggregateWriter:
    """One report being written: `start`, `record` for each group, `finish` for the bytes."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.records = 0
        self.messages = 0
        self._buffer = io.BytesIO()
        self._gzip = gzip.GzipFile(fileobj=self._buffer, mode="wb", mtime=0)

    def _write(self, text: str) -> None:
        self._gzip.write(text.encode("utf-8"))
        if self._buffer.tell() > self.max_size:
            raise ReportTooLarge(f"more than {self.max_size} bytes gzipped")

    def start(self, metadata: Metadata, policy: dict[str, Any]) -> None:
        """The XML declaration, ``report_metadata`` and ``policy_published``."""
        parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<feedback>\n<report_metadata>']
        parts.append(_element("org_name", metadata.org_name))
        parts.append(_element("email", metadata.email))
        if metadata.extra_contact_info:
            parts.append(_element("extra_contact_info", metadata.extra_contact_info))
        parts.append(_element("report_id", metadata.report_id))
        parts.append(
            "<date_range>"
            + _element("begin", metadata.begin)
            + _element("end", metadata.end)
            + "</date_range>"
        )
        parts.append("</report_metadata>\n<policy_published>")
        for key in ("domain", "adkim", "aspf", "p", "sp", "pct"):
            parts.append(_element(key, policy[key]))
        parts.append("</policy_published>\n")
        self._write("".join(parts))

    def record(self, group: Group) -> None:
        """One ``<record>``: the source, count and policy evaluated, identifiers, results."""
        parts = ["<record><row>"]
        parts.append(_element("source_ip", report_ip(group.source_ip)))
        parts.append(_element("count", group.count))
        parts.append("<policy_evaluated>")
        parts.append(_element("disposition", group.disposition))
        parts.append(_element("dkim", group.dkim_aligned))
        parts.append(_element("spf", group.spf_aligned))
        for kind, comment in group.reasons:
            parts.append("<reason>" + _element("type", kind))
            if comment:
                parts.append(_element("comment", comment))
            parts.append("</reason>")
        parts.append("</policy_evaluated></row><identifiers>")
        parts.append(_element("header_from", group.header_from))
        # RFC 7489 requires envelope_from; for the null sender it is the HELO domain SPF used
        # when there was one, else empty.
        envelope = group.envelope_from or (group.spf[0] if group.spf else "")
        parts.append(_element("envelope_from", envelope))
        parts.append("</identifiers><auth_results>")
        for domain, selector, result in group.dkim:
            parts.append("<dkim>" + _element("domain", domain))
            if selector:
                parts.append(_element("selector", selector))
            parts.append(_element("result", result) + "</dkim>")
        # The schema wants at least one spf element: "none" for the envelope domain when
        # SPF was not checked.
        domain, scope, result = group.spf or (envelope, "mfrom", "none")
        parts.append(
            "<spf>"
            + _element("domain", domain)
            + _element("scope", scope)
            + _element("result", result)
            + "</spf>"
        )
        parts.append("</auth_results></record>\n")
        self._write("".join(parts))
        self.records += 1
        self.messages += group.count

    def finish(self) -> bytes:
        """Close the document; the gzipped bytes."""
        self._write("</feedback>\n")
        self._gzip.close()
        data = self._buffer.getvalue()
        if len(data) > self.max_size:
            raise ReportTooLarge(f"more than {self.max_size} bytes gzipped")
        return data


def build(
    metadata: Metadata, policy: dict[str, Any], groups: Iterable[Group], max_size: int
) -> tuple[bytes, int, int]:
    """A whole report from groups in memory (tests and small reports): the gzipped XML,
    the records and the messages in it."""
    writer = AggregateWriter(max_size)
    writer.start(metadata, policy)
    for group in groups:
        writer.record(group)
    return writer.finish(), writer.records, writer.messages
