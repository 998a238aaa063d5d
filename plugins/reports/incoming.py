"""Reading the reports other receivers send: DMARC aggregate (XML, plain, gzip or zip), DMARC
failure (ARF, RFC 6591) and SMTP TLS reports (RFC 8460 JSON, plain or gzip).

`parse_mail` takes a whole message and returns one `Received` per report found in it, or
one ``malformed`` entry with the reason and the raw part. Every decompression is bounded
(`Limits`): a part past ``max_part`` compressed or ``max_decompressed`` decompressed, or a
zip with more than ``max_zip_entries`` entries, is refused, not expanded; XML with a DOCTYPE
(entities: the "billion laughs") is refused before it is parsed.
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from xml.etree import ElementTree

GZIP_MAGIC, ZIP_MAGIC = b"\x1f\x8b", b"PK\x03\x04"


class ReportError(ValueError):
    """The part is not a report we can read; the message says why."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one report may cost to read."""

    max_part: int = 10 << 20
    max_decompressed: int = 50 << 20
    max_zip_entries: int = 10


@dataclass(slots=True)
class Received:
    """One report read from a mail (or why it could not be)."""

    kind: str
    """``aggregate``, ``failure``, ``tlsrpt`` or ``malformed``."""
    org_name: str = ""
    report_id: str = ""
    domain: str = ""
    begin: int = 0
    end: int = 0
    messages: int = 0
    """Messages the report counts (aggregate, tlsrpt: sessions); 1 for a failure report."""
    passed: int = 0
    """Of them, passing DMARC (aggregate) or successful sessions (tlsrpt)."""
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    raw: bytes = b""
    """The undecoded part, kept for a malformed report."""


def _bounded_gunzip(data: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ReportError(f"more than {limit} bytes once decompressed")
    return out


def _bounded_unzip(data: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ReportError(f"not a zip file: {exc}") from None
    entries = [i for i in archive.infolist() if not i.is_dir()]
    if len(entries) > limits.max_zip_entries:
        raise ReportError(f"{len(entries)} files in the zip, at most {limits.max_zip_entries}")
    found, total = [], 0
    for info in entries:
        with archive.open(info) as member:
            content = member.read(limits.max_decompressed - total + 1)
        total += len(content)
        if total > limits.max_decompressed:
            raise ReportError(f"more than {limits.max_decompressed} bytes once decompressed")
        found.append((info.filename, content))
    return found


def _contents(name: str, data: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    """The files inside a part: itself, or what its gzip or zip holds."""
    if len(data) > limits.max_part:
        raise ReportError(f"a part of {len(data)} bytes, at most {limits.max_part}")
    if data.startswith(GZIP_MAGIC):
        try:
            return [(name.removesuffix(".gz"), _bounded_gunzip(data, limits.max_decompressed))]
        except (zlib.error, EOFError) as exc:
            raise ReportError(f"broken gzip: {exc}") from None
    if data.startswith(ZIP_MAGIC):
        return _bounded_unzip(data, limits)
    return [(name, data)]


def _text(element: ElementTree.Element | None, path: str) -> str:
    found = None if element is None else element.findtext(path)
    return (found or "").strip()


def parse_aggregate(xml: bytes) -> Received:
    """A DMARC aggregate report (RFC 7489 Appendix C), with or without a namespace."""
    head = xml[:2048].lower()
    if b"<!doctype" in head or b"<!entity" in xml.lower():
        raise ReportError("XML with a DOCTYPE or entities is refused")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise ReportError(f"broken XML: {exc}") from None
    for element in root.iter():  # the DMARCbis namespace, or RFC 7489's, or none: the same
        element.tag = element.tag.rpartition("}")[2]
    if root.tag != "feedback":
        raise ReportError(f"XML whose root is <{root.tag}>, not <feedback>")
    metadata, policy = root.find("report_metadata"), root.find("policy_published")
    if metadata is None or policy is None:
        raise ReportError("no report_metadata or policy_published")
    records, messages, passed = [], 0, 0
    for record in root.iterfind("record"):
        try:
            count = int(_text(record, "row/count") or "0")
        except ValueError:
            raise ReportError("a record whose count is not a number") from None
        dkim, spf = (
            _text(record, "row/policy_evaluated/dkim"),
            _text(record, "row/policy_evaluated/spf"),
        )
        messages += count
        passed += count if "pass" in (dkim, spf) else 0
        records.append(
            {
                "source_ip": _text(record, "row/source_ip"),
                "count": count,
                "disposition": _text(record, "row/policy_evaluated/disposition"),
                "dkim": dkim,
                "spf": spf,
                "header_from": _text(record, "identifiers/header_from"),
            }
        )
    try:
        begin = int(_text(metadata, "date_range/begin") or "0")
        end = int(_text(metadata, "date_range/end") or "0")
    except ValueError:
        raise ReportError("a date_range that is not numbers") from None
    return Received(
        "aggregate",
        org_name=_text(metadata, "org_name"),
        report_id=_text(metadata, "report_id"),
        domain=_text(policy, "domain").lower(),
        begin=begin,
        end=end,
        messages=messages,
        passed=passed,
        detail={"records": records, "policy": {c.tag: (c.text or "") for c in policy}},
    )


def parse_tlsrpt(data: bytes) -> Received:
    """An SMTP TLS report (RFC 8460 section 4)."""
    try:
        report = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"broken JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("policies"), list):
        raise ReportError("not an SMTP TLS report (no policies list)")
    sessions, successful, domains = 0, 0, []
    for entry in report["policies"]:
        summary = entry.get("summary", {}) if isinstance(entry, dict) else {}
        ok = int(summary.get("total-successful-session-count", 0) or 0)
        failed = int(summary.get("total-failure-session-count", 0) or 0)
        sessions, successful = sessions + ok + failed, successful + ok
        domains.append(str(entry.get("policy", {}).get("policy-domain", "")))
    dates = report.get("date-range", {}) if isinstance(report.get("date-range"), dict) else {}
    return Received(
        "tlsrpt",
        org_name=str(report.get("organization-name", "")),
        report_id=str(report.get("report-id", "")),
        domain=(domains[0] if domains else "").lower(),
        messages=sessions,
        passed=successful,
        detail={
            "start": dates.get("start-datetime", ""),
            "end": dates.get("end-datetime", ""),
            "domains": domains,
        },
    )


def parse_failure(report: Message) -> Received:
    """A DMARC failure report: the ``message/feedback-report`` part of a multipart/report."""
    fields: dict[str, str] = {}
    for part in report.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            first = payload[0] if isinstance(payload, list) and payload else None
            text = first.as_string() if isinstance(first, Message) else str(payload)
            for line in text.splitlines():
                name, colon, value = line.partition(":")
                if colon and name.strip():
                    fields.setdefault(name.strip().lower(), value.strip())
    if fields.get("feedback-type", "").lower() != "auth-failure":
        raise ReportError("a feedback report that is not Feedback-Type: auth-failure")
    return Received(
        "failure",
        org_name=fields.get("reporting-mta", ""),
        domain=fields.get("reported-domain", "").lower(),
        messages=1,
        detail={
            k: fields[k]
            for k in (
                "source-ip",
                "auth-failure",
                "delivery-result",
                "original-mail-from",
                "arrival-date",
            )
            if k in fields
        },
    )


def _parse_file(name: str, data: bytes) -> Received:
    stripped = data.lstrip()
    if stripped.startswith(b"{"):
        return parse_tlsrpt(data)
    if stripped.startswith(b"<"):
        return parse_aggregate(data)
    raise ReportError(f"{name or 'a part'}: neither XML nor JSON")


_REPORT_TYPES = (
    "application/gzip",
    "application/x-gzip",
    "application/zip",
    "application/x-zip-compressed",
    "application/xml",
    "text/xml",
    "application/tlsrpt+gzip",
    "application/tlsrpt+json",
    "application/octet-stream",
)


def parse_mail(raw: bytes, limits: Limits | None = None) -> list[Received]:
    """Every report in the mail `raw`; a ``malformed`` entry for each part that looked like
    one and was not, or one for the whole mail when nothing in it is a report."""
    limits = limits or Limits()
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    report_type = message.get_param("report-type")
    if (
        message.get_content_type() == "multipart/report"
        and isinstance(report_type, str)
        and report_type.lower() == "feedback-report"
    ):
        try:
            return [parse_failure(message)]
        except ReportError as exc:
            return [Received("malformed", error=str(exc), raw=raw[: limits.max_part])]
    found: list[Received] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        name = part.get_filename() or ""
        kind = part.get_content_type()
        looks = kind in _REPORT_TYPES or name.endswith((".xml", ".gz", ".zip", ".json"))
        if not looks:
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        try:
            for inner, content in _contents(name, data, limits):
                found.append(_parse_file(inner, content))
        except ReportError as exc:
            found.append(Received("malformed", error=str(exc), raw=data[: limits.max_part]))
    if not found:
        found.append(
            Received("malformed", error="no report in the mail", raw=raw[: limits.max_part])
        )
    return found
