"""Reading incoming reports: the formats the large receivers send, and the bad ones."""

from __future__ import annotations

import asyncio
import smtplib

import pytest
from sqlalchemy import select

from mailgate.plugins.reports.incoming import Limits, parse_mail
from mailgate.store.schema import dmarc_received
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.reports import samples
from tests.plugins.reports.conftest import NodeFactory, service_of

TO = "dmarc@alpha.test"


@pytest.mark.parametrize(
    ("mail", "org"),
    [
        (samples.zipped, "google.test"),
        (samples.gzipped_bis, "outlook.test"),
        (samples.plain_xml, "plain.test"),
    ],
)
def test_aggregate_reports_zipped_gzipped_or_plain(mail: object, org: str) -> None:
    [report] = parse_mail(mail(TO))  # type: ignore[operator]
    assert (report.kind, report.org_name, report.domain) == ("aggregate", org, "alpha.test")
    assert (report.messages, report.passed, report.begin) == (15, 12, 1733184000)
    assert report.report_id == f"{org}-42"
    assert [r["source_ip"] for r in report.detail["records"]] == ["192.0.2.10", "203.0.113.7"]


def test_an_smtp_tls_report() -> None:
    [report] = parse_mail(samples.tls_report(TO))
    assert (report.kind, report.org_name, report.domain) == (
        "tlsrpt",
        "tls-receiver.test",
        "alpha.test",
    )
    assert (report.messages, report.passed) == (100, 90)


def test_a_failure_report() -> None:
    [report] = parse_mail(samples.failure_report(TO))
    assert (report.kind, report.domain, report.messages) == ("failure", "alpha.test", 1)
    assert report.detail["source-ip"] == "192.0.2.99"
    assert report.detail["auth-failure"] == "dmarc"


@pytest.mark.parametrize(
    ("mail", "reason"),
    [
        (samples.zip_bomb, "once decompressed"),
        (samples.gzip_bomb, "once decompressed"),
        (samples.broken_xml, "broken XML"),
        (samples.entity_bomb, "DOCTYPE"),
    ],
)
def test_bad_reports_are_kept_raw_with_the_reason(mail: object, reason: str) -> None:
    raw = mail(TO)  # type: ignore[operator]
    [report] = parse_mail(raw, Limits(max_decompressed=1 << 20))
    assert report.kind == "malformed"
    assert reason in report.error
    assert report.raw and len(report.raw) <= len(raw)


def test_a_mail_with_no_report_is_malformed() -> None:
    [report] = parse_mail(b"From: a@b.test\r\nSubject: hi\r\n\r\njust text\r\n")
    assert (report.kind, report.error) == ("malformed", "no report in the mail")


def send(port: int, rcpts: list[str], data: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("receiver.test")
        client.mail("noreply-dmarc@receiver.test")
        for rcpt in rcpts:
            client.rcpt(rcpt)
        return client.data(data)[0]


async def test_reports_to_report_addresses_are_stored_instead_of_delivered(
    store_url: str, smtp_sink: SmtpSink, reporting_node: NodeFactory
) -> None:
    app = await reporting_node(
        store_url, f"127.0.0.1:{smtp_sink.port}", incoming=f'rcpt.address == "{TO}"'
    )
    port = app.ports[0]
    assert await asyncio.to_thread(send, port, [TO], samples.zipped(TO)) == 250
    assert await asyncio.to_thread(send, port, [TO], samples.broken_xml(TO)) == 250
    both = ["bob@example.org", TO]
    assert await asyncio.to_thread(send, port, both, samples.tls_report(TO)) == 250
    [delivered] = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 30)
    assert delivered.rcpts == ("bob@example.org",)  # the report address was taken off
    await asyncio.sleep(0.5)
    assert len(smtp_sink.messages()) == 1
    service = service_of(app)
    async with service.store.engine.connect() as conn:
        rows = (await conn.execute(select(dmarc_received).order_by(dmarc_received.c.id))).all()
    assert [(r.kind, r.domain, r.messages) for r in rows] == [
        ("aggregate", "alpha.test", 15),
        ("malformed", "", 0),
        ("tlsrpt", "alpha.test", 100),
    ]
    assert rows[1].raw and "broken XML" in rows[1].error
    assert service.metrics.received.labels("aggregate")._value.get() == 1
