"""The bridge against the milters people run: opendkim, opendmarc, clamav-milter,
spamass-milter, rspamd, and mailgate's own milter listener."""

from __future__ import annotations

import io
import smtplib

import dkim
import pytest

from mailgate import Address, Message, Session, Transaction, Verdict, VerdictKind
from mailgate.message import parse_header_block
from mailgate.milter import MilterListener, MilterListenerSettings
from mailgate.pipeline import EnabledPlugin, Pipeline
from mailgate.plugins.add_header import AddHeader, AddHeaderSettings
from tests.peers.clamav_milter import ClamavMilter
from tests.peers.clamd import EICAR
from tests.peers.opendkim import DkimKey, OpenDkim
from tests.peers.opendmarc import OpenDmarc
from tests.peers.rspamd import Rspamd
from tests.peers.smtp_sink import SmtpSink
from tests.peers.spamass_milter import SpamassMilter
from tests.peers.spamd import GTUBE
from tests.plugins.milter.conftest import BridgeFactory, milter

SIGNABLE = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: sign me\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
    b"\r\nhello\r\nworld\r\n"
)


def send(port: int, data: bytes, sender: str = "a@example.com") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, ["b@example.net"], data)


def refusal(port: int, data: bytes) -> smtplib.SMTPDataError:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    with client, pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("a@example.com", ["b@example.net"], data)
    return err.value


def test_opendkim_signature_verifies_with_dkimpy_and_opendkim(
    opendkim_signer: OpenDkim,
    opendkim_verifier: OpenDkim,
    dkim_key: DkimKey,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
) -> None:
    signer = bridge_factory(milter(opendkim_signer.milter))
    send(signer.port, SIGNABLE)
    [signed] = smtp_sink.wait_for_messages(1)
    assert "d=example.com" in (signed.header("DKIM-Signature") or "")
    record = dkim_key.record.encode()
    assert dkim.verify(signed.data, dnsfunc=lambda name, timeout=5: record)
    smtp_sink.clear()
    verifier = bridge_factory(milter(opendkim_verifier.milter))
    send(verifier.port, signed.data)
    [verified] = smtp_sink.wait_for_messages(1)
    assert "dkim=pass" in (verified.header("Authentication-Results") or "")


def test_a_signature_broken_after_signing_fails_verification(
    opendkim_signer: OpenDkim,
    opendkim_verifier: OpenDkim,
    dkim_key: DkimKey,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
) -> None:
    send(bridge_factory(milter(opendkim_signer.milter)).port, SIGNABLE)
    [signed] = smtp_sink.wait_for_messages(1)
    tampered = signed.data.replace(b"hello", b"HELLO")
    record = dkim_key.record.encode()
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: record)
    smtp_sink.clear()
    send(bridge_factory(milter(opendkim_verifier.milter)).port, tampered)
    [verified] = smtp_sink.wait_for_messages(1)
    assert "dkim=fail" in (verified.header("Authentication-Results") or "")


def test_clamav_milter_refuses_eicar_with_its_reply(
    clamav_milter: ClamavMilter, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(clamav_milter.milter))
    err = refusal(gw.port, b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n")
    assert err.smtp_code == 550
    assert b"Virus found" in err.smtp_error
    send(gw.port, b"Subject: clean\r\n\r\nnothing here\r\n")
    [tx] = smtp_sink.wait_for_messages(1)
    assert (tx.header("X-Virus-Status") or "").startswith("Clean")


def test_spamass_milter_refuses_gtube_and_tags_the_rest(
    spamass_milter: SpamassMilter, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(spamass_milter.milter))
    err = refusal(gw.port, b"Subject: spam\r\n\r\n" + GTUBE + b"\r\n")
    assert err.smtp_code == 550
    send(gw.port, b"From: a@example.com\r\nSubject: ham\r\n\r\nhello\r\n")
    [tx] = smtp_sink.wait_for_messages(1)
    assert (tx.header("X-Spam-Status") or "").startswith("No")
    assert tx.header("X-Spam-Checker-Version") is not None


def test_rspamd_adds_its_headers_and_refuses_gtube(
    rspamd: Rspamd, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(rspamd.milter))
    send(gw.port, b"From: a@example.com\r\nSubject: ham\r\n\r\nhello there\r\n")
    [tx] = smtp_sink.wait_for_messages(1)
    assert tx.header("X-Spamd-Result") is not None
    assert tx.header("X-Spam-Status") is not None
    err = refusal(gw.port, b"From: a@example.com\r\nSubject: spam\r\n\r\n" + GTUBE + b"\r\n")
    assert err.smtp_code == 554


def test_opendmarc_passes_aligned_mail_and_refuses_a_spoof(
    opendmarc: OpenDmarc, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    gw = bridge_factory(milter(opendmarc.milter))
    send(gw.port, b"From: a@example.com\r\nSubject: aligned\r\n\r\nhi\r\n")
    [tx] = smtp_sink.wait_for_messages(1)
    assert "dmarc=pass" in (tx.header("Authentication-Results") or "")


SPOOFABLE = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: dmarc\r\n\r\nhi\r\n"


async def through_pipeline(
    pipeline: Pipeline, client_ip: str, data: bytes
) -> tuple[Verdict | None, Transaction]:
    """One whole session from `client_ip` (CONNECT and ``{client_addr}`` carry it) through
    `pipeline`, stage by stage as the SMTP ingress runs it; the first refusal and the tx."""
    session = Session(client_ip=client_ip, client_port=40000)
    tx = Transaction(Address("a@example.com"))
    rcpt = Address("b@example.net")
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        verdict = await pipeline.connect(session) or await pipeline.helo(session, "c.example.com")
        if verdict is not None:
            return verdict, tx
        session.helo = "c.example.com"
        verdict = await pipeline.mail(session, tx) or await pipeline.rcpt(session, tx, rcpt)
        if verdict is not None:
            return verdict, tx
        tx.recipients.append(rcpt)
        if verdict := await pipeline.data(session, tx):
            return verdict, tx
        tx.message = Message(parse_header_block(head + b"\r\n"), io.BytesIO(body))
        return await pipeline.message(session, tx), tx
    finally:
        await pipeline.disconnect(session)


async def test_opendmarc_refuses_a_spoof_from_outside_spf_and_passes_it_from_inside(
    opendmarc: OpenDmarc,
) -> None:
    pipeline = Pipeline([milter(opendmarc.milter)])
    verdict, _ = await through_pipeline(pipeline, "198.51.100.7", SPOOFABLE)
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert (verdict.code, verdict.status, verdict.text) == (
        550,
        "5.7.1",
        "rejected by DMARC policy for example.com",
    )
    verdict, tx = await through_pipeline(pipeline, "192.0.2.10", SPOOFABLE)
    assert verdict is None
    assert tx.message is not None
    results = tx.message.get("Authentication-Results") or ""
    assert "dmarc=pass" in results and "header.from=example.com" in results


def test_mailgate_milter_listener_works_as_a_milter(
    bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    tagger = AddHeader(AddHeaderSettings(name="X-Listener"))
    pipeline = Pipeline([EnabledPlugin("add_header", tagger)])
    listener = MilterListener(
        MilterListenerSettings(address="inet:127.0.0.1:0"), pipeline=lambda: pipeline
    )
    gw = bridge_factory()
    gw.run(listener.start())
    try:
        plugin = milter(listener.address)
        gw.pipeline = Pipeline([plugin])
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
            for i in range(2):
                client.sendmail("a@example.com", ["b@example.net"], f"Subject: {i}\r\n\r\nx\r\n")
        txs = smtp_sink.wait_for_messages(2)
        assert [t.header("X-Listener") for t in txs] == ["passed", "passed"]
    finally:
        gw.run(listener.stop())
