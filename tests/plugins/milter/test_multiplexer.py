"""The multiplexer path end to end: Postfix → mailgate's milter listener → the bridge →
opendkim (signing) and clamav-milter, as one ``milters = [...]`` list; what each milter does
reaches Postfix, and what Postfix relays is checked at the smtp-sink behind it."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import dkim
import pytest

from mailgate.config import load_settings
from mailgate.plugins.milter import MilterPlugin, MilterSettings
from tests.milter.gate import Chain, LoopThread, start_listener
from tests.peers.clamav_milter import ClamavMilter
from tests.peers.clamd import EICAR
from tests.peers.opendkim import DkimKey, OpenDkim
from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs
from tests.plugins.milter.conftest import ActionMilterFactory


@dataclass
class Multiplexer:
    """Postfix (relaying to the smtp-sink) whose one milter is mailgate's listener."""

    postfix: Postfix
    port: int
    chain: Chain


@pytest.fixture
def multiplexer(peer_dirs: PeerDirs, smtp_sink: SmtpSink) -> Iterator[Multiplexer]:
    loop, chain = LoopThread(), Chain()
    listener = start_listener(loop, chain, "inet:127.0.0.1:0")
    postfix = Postfix(peer_dirs.new("postfix"), relayhost=smtp_sink.address)
    port = postfix.add_listener([listener.address], protocol=6)
    postfix.start()
    try:
        yield Multiplexer(postfix, port, chain)
    finally:
        postfix.stop()
        loop.run(listener.stop())
        loop.close()


def bridge(*entries: dict[str, object]) -> MilterPlugin:
    settings = load_settings(MilterSettings, {"milters": list(entries)}, source="40-milters.toml")
    return MilterPlugin(settings)


def message(test_id: str, body: bytes = b"hello from the multiplexer\r\n") -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.net\r\nSubject: multiplexed\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{test_id}@example.com>\r\n"
        f"X-Test-Id: {test_id}\r\n\r\n"
    ).encode() + body


def test_opendkim_and_clamav_milter_changes_reach_postfix(
    multiplexer: Multiplexer,
    opendkim_signer: OpenDkim,
    clamav_milter: ClamavMilter,
    dkim_key: DkimKey,
    smtp_sink: SmtpSink,
) -> None:
    multiplexer.chain.use(
        bridge(
            {"address": clamav_milter.milter, "name": "clamav", "stages": ["message"]},
            {"address": opendkim_signer.milter, "name": "opendkim", "stages": ["message"]},
        ),
        timeout=30.0,
    )
    test_id = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", multiplexer.port, timeout=30) as client:
        client.sendmail("a@example.com", ["b@example.net"], message(test_id))
    [relayed] = smtp_sink.wait_for_messages(1, timeout=20)
    assert test_id.encode() in relayed.data
    # clamav-milter's headers, and opendkim's signature, added by Postfix as milter actions.
    assert (relayed.header("X-Virus-Status") or "").startswith("Clean")
    assert relayed.header("X-Virus-Scanned") is not None
    assert "d=example.com" in (relayed.header("DKIM-Signature") or "")
    record = dkim_key.record.encode()
    assert dkim.verify(relayed.data, dnsfunc=lambda name, timeout=5: record)

    # EICAR: clamav-milter's refusal is Postfix's answer; nothing is relayed.
    smtp_sink.clear()
    client = smtplib.SMTP("127.0.0.1", multiplexer.port, timeout=30)
    with client, pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("a@example.com", ["b@example.net"], message("eicar", EICAR + b"\r\n"))
    assert err.value.smtp_code == 550
    assert b"Virus found" in err.value.smtp_error
    assert smtp_sink.messages() == []


def test_an_unknown_command_reaches_the_milter_through_postfix(
    multiplexer: Multiplexer, action_milter_factory: ActionMilterFactory, smtp_sink: SmtpSink
) -> None:
    """Postfix passes the unknown command to the listener (SMFIC_UNKNOWN), the bridge to the
    milter; the milter's reply is what the client gets from Postfix."""
    multiplexer.chain.use(bridge({"address": action_milter_factory("A")}), timeout=30.0)
    with smtplib.SMTP("127.0.0.1", multiplexer.port, timeout=30) as client:
        client.ehlo("client.example")
        code, text = client.docmd("XREJECT via postfix")
        # Postfix passes the command's verb only.
        assert (code, text) == (550, b"5.5.1 A refuses XREJECT")
        code, _ = client.docmd("XOTHER")
        assert code == 500  # Postfix's own "5.5.2 Error: command not recognized"
