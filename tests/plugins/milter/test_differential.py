"""The same messages through Postfix's milter client and through the bridge, to the same
opendkim and rspamd: the same headers and the same verdicts."""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.peers.opendkim import OpenDkim
from tests.peers.postfix import PostfixFactory
from tests.peers.rspamd import Rspamd
from tests.peers.smtp_sink import SinkTransaction, SmtpSink
from tests.peers.spamd import GTUBE
from tests.plugins.milter.conftest import BridgeFactory, milter

MESSAGES = [
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: plain\r\n"
    b"Message-ID: <d1@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nhello\r\n",
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: folded\r\n subject line\r\n"
    b"Message-ID: <d2@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"X-Long: one\r\n\ttwo\r\n\r\n" + b"line of body text\r\n" * 5000,
]


def _tags(signature: str) -> dict[str, str]:
    tags = {}
    for part in re.sub(r"\s+", "", signature).split(";"):
        name, _, value = part.partition("=")
        if name:
            tags[name] = value
    return tags


def _through(port: int, sink: SmtpSink, data: bytes) -> SinkTransaction:
    sink.clear()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("a@example.com", ["b@example.net"], data)
    [tx] = sink.wait_for_messages(1)
    return tx


@pytest.mark.parametrize("data", MESSAGES, ids=["plain", "folded-and-long"])
def test_opendkim_signs_the_same_through_postfix_and_the_bridge(
    opendkim_signer: OpenDkim,
    postfix_factory: PostfixFactory,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
    data: bytes,
) -> None:
    postfix = postfix_factory(relay=smtp_sink, start=False)
    pf_port = postfix.add_listener([opendkim_signer.milter])
    postfix.start()
    gateway = bridge_factory(milter(opendkim_signer.milter))
    by_postfix = _tags(_through(pf_port, smtp_sink, data).header("DKIM-Signature") or "")
    by_bridge = _tags(_through(gateway.port, smtp_sink, data).header("DKIM-Signature") or "")
    for tag in ("v", "a", "c", "d", "s", "bh"):
        assert by_bridge[tag] == by_postfix[tag], tag
    assert set(by_bridge["h"].lower().split(":")) == set(by_postfix["h"].lower().split(":"))


def test_rspamd_decides_the_same_through_postfix_and_the_bridge(
    rspamd: Rspamd,
    postfix_factory: PostfixFactory,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
) -> None:
    postfix = postfix_factory(relay=smtp_sink, start=False)
    pf_port = postfix.add_listener([rspamd.milter])
    postfix.start()
    gateway = bridge_factory(milter(rspamd.milter))
    ham = MESSAGES[0]
    by_postfix, by_bridge = (
        _through(pf_port, smtp_sink, ham),
        _through(gateway.port, smtp_sink, ham),
    )
    for name in ("X-Spam-Status", "X-Spamd-Result"):
        assert (by_postfix.header(name) is None) == (by_bridge.header(name) is None), name
    assert (by_postfix.header("X-Spam-Status") or "")[:3] == (
        by_bridge.header("X-Spam-Status") or ""
    )[:3]
    spam = b"From: a@example.com\r\nSubject: spam\r\n\r\n" + GTUBE + b"\r\n"
    codes = []
    for port in (pf_port, gateway.port):
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        with client, pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("a@example.com", ["b@example.net"], spam)
        codes.append((err.value.smtp_code, err.value.smtp_error))
    assert codes[0] == codes[1]
