"""Mail through the real SMTP listener, evaluated by spf and dmarc against the test DNS,
recorded by reports, reported to each domain's rua through the queue to a real smtp-sink."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections import Counter
from pathlib import Path

import dkim

from mailgate.plugins.dkim.keys import generate, zone_line
from mailgate.plugins.reports.destinations import parse_destination
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.reports.conftest import NodeFactory, service_of
from tests.plugins.reports.helpers import (
    assert_valid,
    attachment,
    counts,
    parsed_by_parsedmarc,
)

DAY = 86400
LOAD = [
    # (header From domain, envelope domain, messages): SPF passes for the domain itself
    ("alpha.test", "alpha.test", 5),
    ("alpha.test", "elsewhere.test", 3),
    ("beta.test", "beta.test", 4),
    ("beta.test", "alpha.test", 2),
    ("gamma.test", "gamma.test", 2),
    ("delta.test", "delta.test", 3),
    ("norua.test", "norua.test", 2),
]


def send_load(port: int) -> int:
    """Send `LOAD` in one session; the messages accepted (beta's failures are refused)."""
    accepted = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        for author, envelope, n in LOAD:
            for i in range(n):
                client.mail(f"bounce@{envelope}")
                client.rcpt("bob@example.org")
                body = f"From: a@{author}\r\nSubject: {i}\r\n\r\nhello\r\n"
                code, _ = client.data(body.encode())
                assert code in (250, 550), code
                accepted += code == 250
    return accepted


async def test_reports_reach_each_authorized_rua_with_the_counts_sent(
    store_url: str, smtp_sink: SmtpSink, reporting_node: NodeFactory
) -> None:
    app = await reporting_node(store_url, f"127.0.0.1:{smtp_sink.port}")
    total = sum(n for _, _, n in LOAD) - 2  # beta.test's two failures are refused
    assert await asyncio.to_thread(send_load, app.ports[0]) == total
    await asyncio.to_thread(smtp_sink.wait_for_messages, total, 30)
    smtp_sink.clear()

    service = service_of(app)
    await service.flush()
    outcomes = {o.domain: o for o in await service.send_due(time.time() + 2 * DAY)}

    assert set(outcomes) == {"alpha.test", "beta.test", "gamma.test", "delta.test"}
    assert outcomes["alpha.test"].state == "sent"
    assert outcomes["beta.test"].state == "sent"
    assert outcomes["gamma.test"].state == "undeliverable"
    assert "not authorized" in outcomes["gamma.test"].destinations[0].status
    assert outcomes["delta.test"].state == "sent"
    assert outcomes["delta.test"].destinations[0].status.startswith("too large")
    assert await service.send_due(time.time() + 2 * DAY) == []  # each report once
    assert service.metrics.sent._value.get() == 3
    assert service.metrics.failed._value.get() == 1  # gamma: no authorized destination
    assert service.metrics.recorded._value.get() == sum(n for _, _, n in LOAD)

    arrived = await asyncio.to_thread(smtp_sink.wait_for_messages, 3, 30)
    by_rcpt = {m.rcpts[0]: m for m in arrived}
    assert set(by_rcpt) == {"dmarc@alpha.test", "reports@collector.test", "dmarc@delta.test"}
    assert all(m.mail_from == "dmarc-reports@mx.example.net" for m in arrived)

    for rcpt, domain in (
        ("dmarc@alpha.test", "alpha.test"),
        ("reports@collector.test", "beta.test"),
    ):
        raw = by_rcpt[rcpt].data
        name, xml, message = attachment(raw)
        begin, end = outcomes[domain].begin, outcomes[domain].end - 1
        assert name == f"mx.example.net!{domain}!{begin}!{end}.xml.gz"
        assert message["Subject"].startswith(
            f"Report Domain: {domain} Submitter: mx.example.net Report-ID: <"
        )
        root = assert_valid(xml)
        expected = expected_counts(domain)
        assert counts(root) == expected
        parsed = parsed_by_parsedmarc(raw)
        assert parsed["policy_published"]["domain"] == domain
        seen: Counter[tuple[str, str, str, str]] = Counter()
        for r in parsed["records"]:
            ev = r["policy_evaluated"]
            seen[(r["source"]["ip_address"], ev["disposition"], ev["dkim"], ev["spf"])] += r[
                "count"
            ]
        assert dict(seen) == expected

    error_report = by_rcpt["dmarc@delta.test"].data.decode()
    assert "Report-Domain: delta.test" in error_report
    assert "Submitting-URI: mailto:dmarc@delta.test!1k" in error_report


def expected_counts(domain: str) -> dict[tuple[str, str, str, str], int]:
    """What the report of `domain` must count, from `LOAD`: SPF aligns when the envelope is
    the From domain; nothing is DKIM-signed; beta's failures are rejected (p=reject)."""
    policy = {"beta.test": "reject"}.get(domain, "none")
    found: Counter[tuple[str, str, str, str]] = Counter()
    for author, envelope, n in LOAD:
        if author == domain:
            aligned = envelope == domain
            key = (
                "127.0.0.1",
                "none" if aligned else policy,
                "fail",
                "pass" if aligned else "fail",
            )
            found[key] += n
    return dict(found)


def test_rua_uris_with_sizes_and_other_schemes() -> None:
    assert parse_destination("mailto:a@example.com!10m").max_size == 10 << 20
    assert parse_destination("mailto:a@example.com!500").max_size == 500
    assert parse_destination("mailto:a%40b@example.com").address == "a@b@example.com"
    assert parse_destination("https://example.com/r").problem.startswith("https scheme")
    assert parse_destination("mailto:nobody").problem == "not a mail address"


async def test_a_reload_keeps_one_service_and_stop_closes_it(
    store_url: str, smtp_sink: SmtpSink, reporting_node: NodeFactory
) -> None:
    app = await reporting_node(store_url, f"127.0.0.1:{smtp_sink.port}")
    service = service_of(app)
    [old] = [p.instance for p in app.pipeline.plugins if p.name == "reports"]
    assert app.reload()
    for task in list(app._plugin_tasks):
        await task
    assert service_of(app) is service  # the new instance joined the running service
    assert getattr(old, "service", None) is None  # the old one left it
    await app.stop()
    assert service.writer._task is None  # stopped with the app


async def test_report_mail_is_signed_with_the_dkim_plugins_keys(
    store_url: str,
    smtp_sink: SmtpSink,
    reporting_node: NodeFactory,
    reports_zone: DnsServer,
    tmp_path: Path,
) -> None:
    key = generate("rsa", 1024)
    (tmp_path / "reports.key").write_bytes(key.pem)
    reports_zone.add_zone(
        f"$ORIGIN mx.example.net.\n$TTL 300\n{zone_line('mx.example.net', 'r1', key.record)}\n"
    )
    dkim_toml = f'[[keys."mx.example.net"]]\nselector = "r1"\nkey_file = "{tmp_path}/reports.key"\n'
    app = await reporting_node(store_url, f"127.0.0.1:{smtp_sink.port}", dkim=dkim_toml)
    assert await asyncio.to_thread(send_load, app.ports[0]) == sum(n for _, _, n in LOAD) - 2
    await asyncio.to_thread(smtp_sink.wait_for_messages, 19, 30)
    smtp_sink.clear()
    service = service_of(app)
    await service.flush()
    await service.send_due(time.time() + 2 * DAY)
    arrived = await asyncio.to_thread(smtp_sink.wait_for_messages, 3, 30)
    resolver = reports_zone.resolver()

    def txt(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    for mail in arrived:
        assert mail.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(mail.data, dnsfunc=txt), mail.rcpts
