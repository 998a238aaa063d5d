"""Report mail as the large receivers send it, written for these tests from the RFC schemas
and the published examples (no one's real report): an aggregate report zipped (as Google
sends them), gzipped in the DMARCbis namespace (as Microsoft and Yahoo do), as plain XML; a
failure report (RFC 6591); an SMTP TLS report (RFC 8460, gzipped JSON); and the bad ones: a
zip bomb, a gzip bomb, broken XML, an entity bomb."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

AGGREGATE = """<?xml version="1.0" encoding="UTF-8" ?>
<feedback{ns}>
  {version}<report_metadata>
    <org_name>{org}</org_name>
    <email>noreply-dmarc@{org}</email>
    <report_id>{report_id}</report_id>
    <date_range><begin>1733184000</begin><end>1733270399</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>alpha.test</domain><adkim>r</adkim><aspf>r</aspf><p>none</p><sp>none</sp>
    <pct>100</pct>
  </policy_published>
  <record>
    <row>
      <source_ip>192.0.2.10</source_ip><count>12</count>
      <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>
      </policy_evaluated>
    </row>
    <identifiers><header_from>alpha.test</header_from></identifiers>
    <auth_results>
      <dkim><domain>alpha.test</domain><selector>s1</selector><result>pass</result></dkim>
      <spf><domain>alpha.test</domain><result>pass</result></spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>203.0.113.7</source_ip><count>3</count>
      <policy_evaluated><disposition>none</disposition><dkim>fail</dkim><spf>fail</spf>
      </policy_evaluated>
    </row>
    <identifiers><header_from>alpha.test</header_from></identifiers>
    <auth_results><spf><domain>spoof.test</domain><result>fail</result></spf></auth_results>
  </record>
</feedback>
"""


def aggregate_xml(org: str = "receiver.test", *, bis: bool = False) -> bytes:
    """An aggregate report about alpha.test: 15 messages, 12 passing."""
    ns = ' xmlns="urn:ietf:params:xml:ns:dmarc-2.0"' if bis else ""
    version = "<version>1.0</version>\n  " if bis else ""
    return AGGREGATE.format(ns=ns, version=version, org=org, report_id=f"{org}-42").encode()


def _mail(to: str, attachments: list[tuple[bytes, str, str, str]]) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "noreply-dmarc@receiver.test"
    message["To"] = to
    message["Subject"] = "Report Domain: alpha.test Submitter: receiver.test Report-ID: <42>"
    message.set_content("A report.\n")
    for data, maintype, subtype, filename in attachments:
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def zipped(to: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "google.test!alpha.test!1733184000!1733270399.xml", aggregate_xml("google.test")
        )
    return _mail(
        to,
        [
            (
                buffer.getvalue(),
                "application",
                "zip",
                "google.test!alpha.test!1733184000!1733270399.zip",
            )
        ],
    )


def gzipped_bis(to: str) -> bytes:
    data = gzip.compress(aggregate_xml("outlook.test", bis=True))
    return _mail(
        to, [(data, "application", "gzip", "outlook.test!alpha.test!1733184000!1733270399.xml.gz")]
    )


def plain_xml(to: str) -> bytes:
    return _mail(to, [(aggregate_xml("plain.test"), "text", "xml", "report.xml")])


def tls_report(to: str) -> bytes:
    report = {
        "organization-name": "tls-receiver.test",
        "date-range": {
            "start-datetime": "2026-12-03T00:00:00Z",
            "end-datetime": "2026-12-03T23:59:59Z",
        },
        "contact-info": "tlsrpt@tls-receiver.test",
        "report-id": "2026-12-03T00:00:00Z_alpha.test",
        "policies": [
            {
                "policy": {
                    "policy-type": "sts",
                    "policy-domain": "alpha.test",
                    "mx-host": ["mx.alpha.test"],
                },
                "summary": {
                    "total-successful-session-count": 90,
                    "total-failure-session-count": 10,
                },
                "failure-details": [
                    {
                        "result-type": "certificate-expired",
                        "sending-mta-ip": "192.0.2.20",
                        "receiving-ip": "192.0.2.10",
                        "failed-session-count": 10,
                    }
                ],
            }
        ],
    }
    data = gzip.compress(json.dumps(report).encode())
    return _mail(
        to,
        [
            (
                data,
                "application",
                "tlsrpt+gzip",
                "tls-receiver.test!alpha.test!1733184000!1733270399!1.json.gz",
            )
        ],
    )


def failure_report(to: str) -> bytes:
    """A failure report in the shape of RFC 6591's example."""
    return (
        "From: dmarc-failures@receiver.test\r\n"
        f"To: {to}\r\n"
        "Subject: FW: Earn money\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="part1"\r\n'
        "\r\n--part1\r\nContent-Type: text/plain\r\n\r\n"
        "This is an authentication failure report.\r\n"
        "\r\n--part1\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: auth-failure\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
        "Original-Mail-From: <somespammer@spoof.test>\r\n"
        "Arrival-Date: Thu, 3 Dec 2026 08:00:00 -0800\r\n"
        "Source-IP: 192.0.2.99\r\nReported-Domain: alpha.test\r\n"
        "Authentication-Results: receiver.test; dmarc=fail header.from=alpha.test\r\n"
        "Auth-Failure: dmarc\r\nDelivery-Result: reject\r\n"
        "\r\n--part1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "From: <someone@alpha.test>\r\nTo: <victim@receiver.test>\r\nSubject: Earn money\r\n"
        "\r\n--part1--\r\n"
    ).encode()


def zip_bomb(to: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.xml", b"<" + b"a" * (200 << 20))  # 200 MiB of one letter
    return _mail(to, [(buffer.getvalue(), "application", "zip", "bomb.zip")])


def gzip_bomb(to: str) -> bytes:
    data = gzip.compress(b"\0" * (200 << 20))
    return _mail(to, [(data, "application", "gzip", "bomb.xml.gz")])


def broken_xml(to: str) -> bytes:
    return _mail(to, [(aggregate_xml()[:-40], "text", "xml", "broken.xml")])


def entity_bomb(to: str) -> bytes:
    xml = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b"<feedback>&lol2;</feedback>"
    )
    return _mail(to, [(xml, "text", "xml", "lol.xml")])
