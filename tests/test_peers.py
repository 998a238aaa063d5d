"""Smoke tests for the test daemons: each starts, answers, and records what it received."""

from __future__ import annotations

import smtplib
import socket
import time
from pathlib import Path

import dns.flags
import dns.resolver
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import conftest
from tests.peers.clamav_milter import ClamavMilter
from tests.peers.clamd import EICAR
from tests.peers.dns import EXAMPLE_ZONE, DnsServer
from tests.peers.milter_probe import optneg
from tests.peers.opendkim import DkimKey, OpenDkim, OpenDkimFactory
from tests.peers.opendmarc import OpenDmarc
from tests.peers.ports import free_port
from tests.peers.postfix import Postfix, PostfixFactory
from tests.peers.postgres import Postgres
from tests.peers.process import PeerStartError, start_daemon
from tests.peers.rspamd import Rspamd
from tests.peers.smtp_sink import SmtpSink, SmtpSinkFactory, parse_dump
from tests.peers.spamass_milter import SpamassMilter
from tests.peers.workdir import PeerDirs

SIGNABLE = (
    b"From: Alice <a@example.com>\r\nTo: b@example.net\r\nSubject: signed\r\n"
    b"Date: Thu, 26 Nov 2026 01:00:00 +0000\r\n\r\nHello\r\n"
)
PEERS = Path(__file__).parent / "peers"
MESSAGE = b"From: a@example.com\r\nSubject: smoke\r\n\r\nhello\r\n..dot line\r\n"


def test_every_peer_module_is_a_pytest_plugin() -> None:
    """A new ``tests/peers`` module's fixtures reach the tests once tests/conftest.py lists it."""
    on_disk = {f"tests.peers.{path.stem}" for path in PEERS.glob("[!_]*.py")}
    assert set(conftest.pytest_plugins) == on_disk


def test_tests_using_a_peer_fixture_are_marked_peer(
    request: pytest.FixtureRequest, smtp_sink_factory: SmtpSinkFactory
) -> None:
    assert request.node.get_closest_marker("peer") is not None


def test_daemon_free_tests_are_not_marked_peer(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("peer") is None
    assert {"peer_dirs", "postfix", "smtp_sink", "dns_server"} <= conftest.peer_fixture_names(
        request.config
    )


def test_free_port_is_bindable_and_not_repeated() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


def test_smtp_sink_records_envelope_and_data(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port) as client:
        client.sendmail(
            "a@example.com", ["b@example.net", "c@example.net"], MESSAGE, ["BODY=8BITMIME"]
        )
    [tx] = smtp_sink.messages()
    assert tx.mail_from == "a@example.com"
    assert tx.mail_params == ("BODY=8BITMIME",)
    assert tx.rcpts == ("b@example.net", "c@example.net")
    assert tx.data == MESSAGE
    assert tx.header("subject") == "smoke"


def test_smtp_sink_hard_fails_rcpt(smtp_sink_factory: SmtpSinkFactory) -> None:
    sink = smtp_sink_factory(hard_reject=["RCPT"])
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.ehlo()
        client.mail("a@example.com")
        code, _ = client.rcpt("b@example.net")
    assert code == 500
    assert sink.messages() == []


def test_smtp_sink_soft_fails_data(smtp_sink_factory: SmtpSinkFactory) -> None:
    sink = smtp_sink_factory(soft_reject=["DATA"])
    with smtplib.SMTP(sink.host, sink.port) as client, pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert err.value.smtp_code == 450


def test_daemon_that_exits_reports_its_output(peer_dirs: PeerDirs) -> None:
    with pytest.raises(PeerStartError, match="no such option"):
        start_daemon(
            "failing",
            ["sh", "-c", "echo no such option; exit 3"],
            workdir=peer_dirs.new("failing"),
            probe=lambda: False,
        )


def test_postfix_relays_to_its_sink(postfix: Postfix, smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(postfix.host, postfix.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.rcpts == ("b@example.net",)
    assert tx.header("Subject") == "smoke"
    postfix.wait_for_log(r"to=<b@example\.net>.*status=sent")


def test_postfix_delivers_local_test_to_maildir(postfix: Postfix) -> None:
    with smtplib.SMTP(postfix.host, postfix.port) as client:
        client.sendmail("a@example.com", ["u1@local.test"], MESSAGE)
    [msg] = postfix.wait_for_delivered(1)
    assert msg.delivered_to == "u1@local.test"
    assert msg.message["Subject"] == "smoke"


def test_postfix_test_rules_refuse_recipients(postfix: Postfix) -> None:
    with smtplib.SMTP(postfix.host, postfix.port) as client:
        client.ehlo()
        client.mail("a@example.com")
        assert client.rcpt("reject-me@example.net")[0] == 550
        assert client.rcpt("tempfail@example.net")[0] == 450
        assert client.rcpt("ok@example.net")[0] == 250


def test_postfix_queue_shows_held_message(postfix: Postfix) -> None:
    with smtplib.SMTP(postfix.host, postfix.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], b"X-Test-Hold: yes\r\n\r\nbody\r\n")
    deadline = time.monotonic() + 10
    while not (queue := postfix.queue()) and time.monotonic() < deadline:
        time.sleep(0.05)
    [entry] = queue
    assert entry.held
    assert entry.recipients == ("b@example.net",)


def test_postfix_listener_added_after_start(postfix_factory: PostfixFactory) -> None:
    pf = postfix_factory()
    port = pf.add_listener(options={"smtpd_banner": "$myhostname extra listener"})
    with socket.create_connection((pf.host, port), timeout=5) as sock:
        assert b"extra listener" in sock.recv(512)


def test_dns_server_answers_authoritatively(dns_server: DnsServer) -> None:
    dns_server.add_zone(EXAMPLE_ZONE)
    dns_server.add_records("example.com.", 'sel1._domainkey IN TXT ( "v=DKIM1; " "p=abc" )')
    res = dns_server.resolver()
    mx = res.resolve("example.com", "MX")
    assert [r.exchange.to_text() for r in mx] == ["mail.example.com."]
    assert mx.response.flags & dns.flags.AA
    assert res.resolve("www.example.com", "A")[0].address == "192.0.2.10"
    txt = res.resolve("sel1._domainkey.example.com", "TXT")[0]
    assert b"".join(txt.strings) == b"v=DKIM1; p=abc"
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("nope.example.com", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("_domainkey.example.com", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("example.com", "AAAA")
    with pytest.raises(dns.resolver.NoNameservers):
        res.resolve("other.org", "A")


def test_dns_server_truncates_large_udp_answers_and_serves_tcp(dns_server: DnsServer) -> None:
    records = "\n".join(f'big IN TXT "{"x" * 200} {i}"' for i in range(20))
    dns_server.add_zone(f"$ORIGIN big.test.\n$TTL 60\n{records}\n")
    answer = dns_server.resolver().resolve("big.big.test", "TXT")
    assert len(answer) == 20
    assert {q.transport for q in dns_server.queries} == {"udp", "tcp"}


def test_opendkim_signer_negotiates_and_signs_through_postfix(
    opendkim_signer: OpenDkim, postfix_factory: PostfixFactory, smtp_sink: SmtpSink
) -> None:
    assert optneg(opendkim_signer.milter).version == 6
    pf = postfix_factory(relay=smtp_sink, start=False)
    port = pf.add_listener([opendkim_signer.milter])
    pf.start()
    with smtplib.SMTP(pf.host, port) as client:
        client.sendmail("a@example.com", ["b@example.net"], SIGNABLE)
    [tx] = smtp_sink.wait_for_messages(1)
    assert "d=example.com" in (tx.header("DKIM-Signature") or "")


def test_opendkim_verifier_negotiates(opendkim_verifier: OpenDkim) -> None:
    reply = optneg(opendkim_verifier.milter)
    assert reply.version == 6
    assert reply.actions & 0x01  # SMFIF_ADDHDRS: it adds Authentication-Results


def test_rspamd_negotiates_without_replies_before_end_of_message(rspamd: Rspamd) -> None:
    reply = optneg(rspamd.milter)
    assert reply.version == 6
    assert reply.protocol & 0x80  # SMFIP_NR_HDR: it answers nothing before end of message


def test_clamav_milter_negotiates(clamav_milter: ClamavMilter) -> None:
    reply = optneg(clamav_milter.milter)
    assert reply.version == 6
    assert reply.actions & 0x01  # SMFIF_ADDHDRS: X-Virus-Status


def test_spamass_milter_negotiates(spamass_milter: SpamassMilter) -> None:
    reply = optneg(spamass_milter.milter)
    assert reply.version == 6
    assert reply.actions & 0x01  # SMFIF_ADDHDRS: X-Spam-Status


def test_clamav_milter_rejects_eicar_through_postfix(
    clamav_milter: ClamavMilter, postfix: Postfix
) -> None:
    port = postfix.add_listener([clamav_milter.milter])
    virus = b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n"
    with smtplib.SMTP(postfix.host, port) as client, pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("a@example.com", ["b@example.net"], virus)
    assert err.value.smtp_code == 550
    assert b"Virus found" in err.value.smtp_error


def test_opendmarc_rejects_spoofed_sender_through_postfix(
    opendmarc: OpenDmarc, postfix: Postfix
) -> None:
    assert optneg(opendmarc.milter).version == 6
    port = postfix.add_listener([opendmarc.milter])
    spoof = b"From: a@example.com\r\nSubject: spoof\r\n\r\nhi\r\n"
    with smtplib.SMTP(postfix.host, port) as client:
        client.ehlo()
        assert client.docmd("XCLIENT", "ADDR=198.51.100.7 NAME=[UNAVAILABLE]")[0] == 220
        client.ehlo()
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("a@example.com", ["u1@local.test"], spoof)
    assert err.value.smtp_code == 550
    assert b"DMARC" in err.value.smtp_error


def test_opendmarc_passes_spf_aligned_sender_through_postfix(
    opendmarc: OpenDmarc, postfix: Postfix
) -> None:
    port = postfix.add_listener([opendmarc.milter])
    mail = b"From: a@example.com\r\nSubject: aligned\r\n\r\nhi\r\n"
    with smtplib.SMTP(postfix.host, port) as client:
        client.ehlo()
        client.docmd("XCLIENT", "ADDR=192.0.2.10 NAME=mail.example.com")
        client.ehlo()
        client.sendmail("a@example.com", ["u1@local.test"], mail)
    [msg] = postfix.wait_for_delivered(1)
    assert "dmarc=pass" in str(msg.message["Authentication-Results"])


def test_postgres_runs_sql_in_a_fresh_database(postgres: Postgres) -> None:
    dsn = postgres.create_database("smoke")
    assert dsn.endswith(f":{postgres.port}/smoke")
    out = postgres.psql(
        "CREATE TABLE t (n int)",
        "INSERT INTO t VALUES (41), (1)",
        "SELECT sum(n) FROM t",
        database="smoke",
    )
    assert out.split()[-1] == "42"


_local = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-+", min_size=1, max_size=12)
_address = st.builds(lambda a, b: f"{a}@{b}.test", _local, _local)
_line = st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b)


@given(
    sender=st.one_of(st.just(""), _address),
    rcpts=st.lists(_address, min_size=1, max_size=5),
    params=st.lists(st.sampled_from(["BODY=8BITMIME", "SIZE=100", "SMTPUTF8"]), max_size=3),
    body=st.lists(_line, max_size=8),
)
def test_sink_dump_round_trips(
    sender: str, rcpts: list[str], params: list[str], body: list[bytes]
) -> None:
    message = b"Subject: x\n\n" + b"".join(line + b"\n" for line in body)
    dump = (
        b"X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: client.test\n"
        + f"X-Mail-Args: <{sender}> {' '.join(params)}\n".encode()
        + b"".join(f"X-Rcpt-Args: <{r}>\n".encode() for r in rcpts)
        + b"Received: from client.test\n\tby sink.test (smtp-sink) with ESMTP id 1;\n"
        + b"\tThu, 26 Nov 2026 01:00:00 +0000 (UTC)\n"
        + message
        + b"\n"
    )
    tx = parse_dump(dump, Path("dump"))
    assert tx.mail_from == sender
    assert tx.mail_params == tuple(params)
    assert tx.rcpts == tuple(rcpts)
    assert tx.helo == "client.test"
    assert tx.data == message.replace(b"\n", b"\r\n")


def test_opendkim_verifier_finds_key_in_test_dns(
    opendkim_signer: OpenDkim,
    opendkim_factory: OpenDkimFactory,
    dkim_key: DkimKey,
    dns_server: DnsServer,
    postfix: Postfix,
    smtp_sink: SmtpSink,
) -> None:
    dns_server.add_zone(EXAMPLE_ZONE)
    dns_server.add_records("example.com.", dkim_key.zone_line())
    verifier = opendkim_factory("v", dns=dns_server)
    sign_port = postfix.add_listener([opendkim_signer.milter])
    verify_port = postfix.add_listener([verifier.milter])
    with smtplib.SMTP(postfix.host, sign_port) as client:
        client.sendmail("a@example.com", ["b@example.net"], SIGNABLE)
    [signed] = smtp_sink.wait_for_messages(1)
    with smtplib.SMTP(postfix.host, verify_port) as client:
        client.sendmail("a@example.com", ["u1@local.test"], signed.data)
    [msg] = postfix.wait_for_delivered(1)
    assert "dkim=pass" in str(msg.message["Authentication-Results"])
    assert any(q.name == "sel1._domainkey.example.com." for q in dns_server.queries)
