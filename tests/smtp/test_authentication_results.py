"""Authentication-Results through the SMTP listener to a real smtp-sink: ours is the first
header, with the client's forward-confirmed name and the checks' results; forged ones are gone."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from mailgate.app import App
from mailgate.authentication_results import AuthenticationResultsSettings
from mailgate.authentication_results.parse import parse
from mailgate.dns import DnsSettings
from mailgate.iprev import ClientNames
from mailgate.message import parse_header_block
from mailgate.plugins.spf import Spf, SpfSettings
from tests.peers.dns import EXAMPLE_ZONE, DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to

AUTHSERV_ID = "mx.mailgate.test"

FORGED = (
    b"Authentication-Results: (looks legit) MX.Mailgate.TEST;\r\n"
    b"\tspf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com\r\n"
    b"Authentication-Results: upstream.example.org; spf=fail smtp.mailfrom=example.com\r\n"
    b"ARC-Authentication-Results: i=1; mx.mailgate.test; dkim=pass\r\n"
    b'authentication-results: "mx.mailgate.test" 1; none\r\n'
    b"From: a@example.com\r\n"
    b"Subject: forged results\r\n"
    b"\r\n"
    b"Hello\r\n"
)

LOOPBACK_PTR = "$ORIGIN 0.0.127.in-addr.arpa.\n$TTL 300\n1 IN PTR client.example.com.\n"


def test_ours_is_first_and_the_forged_ones_are_gone(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.add_zone(EXAMPLE_ZONE)
    dns_server.add_records("example.com.", "client IN A 127.0.0.1\n")
    dns_server.add_zone(LOOPBACK_PTR)
    dns = DnsSettings([f"{dns_server.host}:{dns_server.port}"], timeout=2.0, reverse_lookup_skip=[])
    spf = Spf(SpfSettings(skip_networks=[], receiver=AUTHSERV_ID), dns=dns)
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [spf])
    gateway.pipeline.client_names = ClientNames(dns)
    gateway.pipeline.authentication_results = AuthenticationResultsSettings(authserv_id=AUTHSERV_ID)
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        assert client.sendmail("a@example.com", ["b@example.net"], FORGED) == {}
    (got,) = smtp_sink.messages()
    headers = parse_header_block(got.data.split(b"\r\n\r\n")[0] + b"\r\n")
    names = [h.name for h in headers]
    assert names == [
        "Authentication-Results",
        "Received",
        "Authentication-Results",
        "From",
        "Subject",
        "Received-SPF",
    ]
    ours = parse(headers[0].raw_value)
    assert ours.authserv_id == AUTHSERV_ID
    assert [(r.method, r.result, r.properties) for r in ours.results] == [
        ("iprev", "pass", {"policy.iprev": "127.0.0.1"}),
        ("spf", "pass", {"smtp.mailfrom": "example.com"}),
    ]
    assert "(client.example.com)" in headers[0].raw_value
    assert headers[1].value.startswith("from client.test (client.example.com [127.0.0.1])")
    assert headers[2].value == "upstream.example.org; spf=fail smtp.mailfrom=example.com"


REVERSE = """\
$ORIGIN 0.0.127.in-addr.arpa.
$TTL 300
5 IN PTR confirmed.example.com.
6 IN PTR liar.example.com.
"""


def send_from(source: str, port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("client.test")
        forged = b"Authentication-Results: gate.example; iprev=pass\r\n" + FORGED
        assert client.sendmail("a@example.com", ["b@example.net"], forged) == {}


async def test_a_configured_app_names_its_clients_and_writes_the_header(
    tmp_path: Path, smtp_sink: SmtpSink, dns_server: DnsServer
) -> None:
    dns_server.add_zone(EXAMPLE_ZONE)
    dns_server.add_records("example.com.", "confirmed IN A 127.0.0.5\nliar IN A 192.0.2.66\n")
    dns_server.add_zone(REVERSE)
    (tmp_path / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{dns_server.host}:{dns_server.port}"]\ntimeout = 2\n'
        'reverse_lookup_skip = []\n[authentication_results]\nauthserv_id = "gate.example"\n'
    )
    app = App(
        tmp_path,
        listen="127.0.0.1:0",
        relay=f"{smtp_sink.host}:{smtp_sink.port}",
        configure_logs=False,
    )
    await app.start()
    try:
        await asyncio.to_thread(send_from, "127.0.0.5", app.ports[0])
        await asyncio.to_thread(send_from, "127.0.0.6", app.ports[0])
    finally:
        await app.stop()
    # The sink's files need not come back in the order sent: tell them apart by client.
    got_both = smtp_sink.wait_for_messages(2)
    confirmed = next(m for m in got_both if b"[127.0.0.5]" in m.data)
    liar = next(m for m in got_both if b"[127.0.0.6]" in m.data)
    for got, iprev, name in (
        (
            confirmed,
            "iprev=pass policy.iprev=127.0.0.5 (confirmed.example.com)",
            "confirmed.example.com",
        ),
        (liar, "iprev=fail", "unknown"),
    ):
        headers = parse_header_block(got.data.split(b"\r\n\r\n")[0] + b"\r\n")
        assert [h.name for h in headers[:2]] == ["Authentication-Results", "Received"]
        assert headers[0].value.startswith("gate.example;\r\n\t" + iprev)
        assert headers[1].value.startswith(f"from client.test ({name} [127.0.0.")
        others = [h.value for h in headers[2:] if "authentication-results" in h.name.lower()]
        # The forged gate.example one is gone; those claiming other ids stay.
        assert len(others) == 4 and not any(v.startswith("gate.example") for v in others)
