"""Failure reports: which failures ``fo`` asks for, the AFRF message, redaction, the rate
limit, and end to end through the SMTP listener to a real smtp-sink."""

from __future__ import annotations

import asyncio
import smtplib
import time

import parsedmarc
import pytest

from mailgate.plugins.dmarc.evaluation import (
    DkimSignature,
    Evaluation,
    PolicyPublished,
    SpfIdentity,
)
from mailgate.plugins.reports.failure import FailureReport, redact_headers, wanted
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.reports.conftest import NodeFactory, service_of

HEADERS = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org,\r\n carol@example.org\r\n"
    b"Subject: hi\r\nMessage-ID: <part@host.example>\r\n"
)


def evaluation(
    *, dkim: str = "fail", dkim_aligned: str = "fail", spf: str = "pass", spf_aligned: str = "fail"
) -> Evaluation:
    passed = "pass" in (dkim_aligned, spf_aligned)
    return Evaluation(
        source_ip="192.0.2.9",
        header_from="example.com",
        envelope_from="other.test",
        spf=SpfIdentity("other.test", "mfrom", spf),
        dkim=[DkimSignature("example.com", "sel", dkim)],
        result="pass" if passed else "fail",
        policy_published=PolicyPublished(
            "example.com",
            "r",
            "r",
            "reject",
            "reject",
            100,
            None,
            False,
            ruf=("mailto:ruf@example.com",),
        ),
        dkim_aligned=dkim_aligned,  # type: ignore[arg-type]
        spf_aligned=spf_aligned,  # type: ignore[arg-type]
        disposition="none" if passed else "reject",
    )


@pytest.mark.parametrize(
    ("fo", "case", "expected"),
    [
        ("0", {}, True),  # DMARC failed
        ("0", {"dkim": "pass", "dkim_aligned": "pass"}, False),  # passed through DKIM
        ("1", {"dkim": "pass", "dkim_aligned": "pass"}, True),  # SPF was not aligned
        ("1", {"dkim": "pass", "dkim_aligned": "pass", "spf_aligned": "pass"}, False),
        ("d", {"spf_aligned": "pass"}, True),  # a signature failed, DMARC passed
        ("d", {"dkim": "pass", "spf_aligned": "pass"}, False),
        ("s", {"spf": "softfail", "dkim": "pass", "dkim_aligned": "pass"}, True),
        ("s", {"spf": "pass"}, False),
        ("0:s", {"spf": "fail", "dkim": "pass", "dkim_aligned": "pass"}, True),
    ],
)
def test_fo_chooses_the_failures_reported(fo: str, case: dict[str, str], expected: bool) -> None:
    assert wanted(evaluation(**case), fo) is expected


def test_redaction_touches_the_address_fields_only() -> None:
    block = redact_headers(HEADERS.decode())
    assert "alice@" not in block and "bob@" not in block and "carol@" not in block
    assert "@example.com>" in block and "@example.org" in block
    assert "Message-ID: <part@host.example>" in block
    assert block == redact_headers(HEADERS.decode())  # the same address, the same stand-in


def test_the_report_is_afrf_that_parsedmarc_reads() -> None:
    report = FailureReport(
        "Org", "r@mx.test", "mx.test", evaluation(), "bounce@other.test", time.time(), HEADERS
    )
    raw = report.build("ruf@example.com", redacted=False)
    assert b"Content-Type: multipart/report; report-type=feedback-report;" in raw
    found = parsedmarc.parse_report_email(raw, offline=True, always_use_local_files=True)
    assert found["report_type"] == "failure"
    parsed = found["report"]
    assert parsed["feedback_type"] == "auth-failure"
    assert parsed["auth_failure"] == ["dmarc"]
    assert parsed["reported_domain"] == "example.com"
    assert parsed["source"]["ip_address"] == "192.0.2.9"
    assert parsed["delivery_result"] == "reject"
    assert parsed["sample_headers_only"] is True
    assert parsed["parsed_sample"]["from"]["address"] == "alice@example.com"


def send_epsilon(port: int, failing: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        for i in range(failing + 1):
            envelope = "epsilon.test" if i == failing else "elsewhere.test"
            client.mail(f"bounce@{envelope}")
            client.rcpt("bob@example.org")
            body = (
                "From: Alice <alice@epsilon.test>\r\nTo: bob@example.org\r\n"
                f"Subject: {i}\r\n\r\nhi\r\n"
            )
            assert client.data(body.encode())[0] == 250


async def test_failures_are_reported_to_the_authorized_ruf_within_the_rate_limit(
    store_url: str, smtp_sink: SmtpSink, reporting_node: NodeFactory
) -> None:
    app = await reporting_node(
        store_url,
        f"127.0.0.1:{smtp_sink.port}",
        failure_reports=True,
        failure_reports_per_domain=2,
        redact_local_parts=True,
    )
    await asyncio.to_thread(send_epsilon, app.ports[0], 4)
    arrived = await asyncio.to_thread(smtp_sink.wait_for_messages, 5 + 2, 30)
    reports = [m for m in arrived if m.rcpts == ("ruf@epsilon.test",)]
    # fo=1: the four DMARC failures and the pass (its DKIM did not align) are all wanted;
    # two are allowed this hour.
    assert len(reports) == 2
    assert not [m for m in arrived if "unauthorized" in m.rcpts[0]]
    for mail in reports:
        assert mail.mail_from == "dmarc-reports@mx.example.net"
        found = parsedmarc.parse_report_email(mail.data, offline=True, always_use_local_files=True)
        assert found["report_type"] == "failure"
        parsed = found["report"]
        assert parsed["reported_domain"] == "epsilon.test"
        assert parsed["source"]["ip_address"] == "127.0.0.1"
        assert parsed["parsed_sample"]["from"]["address"].startswith("redacted-")
        assert parsed["original_mail_from"].startswith("<redacted-")
    counted = service_of(app).metrics.failure_reports
    assert counted.labels("sent")._value.get() == 2
    assert counted.labels("limited")._value.get() == 3
