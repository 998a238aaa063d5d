"""Forwarded mail that fails DMARC but arrives with a valid ARC chain from a trusted sealer is
delivered, with the override recorded: the documented ``90-dmarc.toml`` rule over the arc
plugin's ``arc_trusted`` result, with the real spf, arc and dmarc plugins from conf.d files,
through the configuration's pipeline and through the SMTP listener to smtp-sink."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailgate import Address, Session, Transaction, Verdict
from mailgate.app import App
from mailgate.loader import load_config
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.plugins import messages
from tests.plugins.arc.conftest import (
    FORWARDER,
    MESSAGE,
    ORIGIN,
    OURS,
    SealerKeys,
    chain,
    dkimpy_verdict,
)

OVERRIDE_RULE = """\
override = [
    { if = '"arc_trusted" in results', then = "trusted_forwarder" },
    { else = "" },
]
"""
"""The rule docs/plugins/arc.md gives for conf.d/90-dmarc.toml (checked there too)."""

REJECTED = f"5.7.1 Message rejected: it fails the DMARC policy of {ORIGIN}".encode()
SENDER = f"bounce@{FORWARDER}"  # SPF passes for the forwarder: not aligned with the From:


def write_conf(directory: Path, dns: DnsServer, keys: SealerKeys, trusted: list[str]) -> Path:
    """spf (80), arc verifying (87), dmarc with the override rule (90), arc sealing (95)."""
    (directory / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{dns.host}:{dns.port}"]\ntimeout = 2.0\n'
    )
    (directory / "80-spf.toml").write_text("skip_networks = []\nreject = []\n")
    (directory / "87-arc.toml").write_text(f"trusted_sealers = {trusted!r}\n".replace("'", '"'))
    (directory / "90-dmarc.toml").write_text("skip_networks = []\n" + OVERRIDE_RULE)
    (directory / "95-arc_seal.toml").write_text(
        'plugin = "arc"\nverify = false\nseal_when = "true"\n'
        'authserv_id = "mx.mailgate.example.org"\n'
        f'[seal]\ndomain = "{OURS}"\nselector = "seal1"\n'
        f'key_file = "{keys.ours.private_key}"\n'
    )
    return directory


async def through_pipeline(conf: Path, data: bytes) -> tuple[Verdict | None, Transaction]:
    pipeline = load_config(conf).pipeline()
    session = Session("127.0.0.1", 40000, helo=f"mx.{FORWARDER}")
    tx = Transaction(Address(SENDER), [Address("bob@example.org")])
    assert await pipeline.mail(session, tx) is None
    tx.message = messages.make_message(data)
    await pipeline.headers(session, tx, list(tx.message.headers))
    return await pipeline.message(session, tx), tx


async def test_a_trusted_sealer_lets_dmarc_deliver_with_the_override(
    tmp_path: Path, arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    conf = write_conf(tmp_path, arc_dns, sealer_keys, [FORWARDER])
    verdict, tx = await through_pipeline(conf, chain(sealer_keys, 2))
    assert verdict is None
    assert tx.results["spf"].result == "pass"
    assert tx.results["arc"].result == "pass"
    assert tx.notes["arc_trusted"] == FORWARDER
    dmarc = tx.results["dmarc"]
    assert (dmarc.result, dmarc.details["policy"]) == ("fail", "reject")
    assert dmarc.details["disposition"] == "none"
    assert dmarc.details["override"] == "trusted_forwarder"
    # and the seal after dmarc carries what this hop found, dmarc included
    sealed = messages.message_bytes(tx)
    aar = messages.make_message(sealed).get_all("ARC-Authentication-Results")[0]
    assert aar.startswith("i=3; mx.mailgate.example.org;")
    assert " ".join(aar.split()).endswith(
        "arc=pass header.oldest-pass=1 smtp.remote-ip=127.0.0.1; dmarc=fail "
        f'reason="no aligned SPF or DKIM pass for {ORIGIN}" header.from={ORIGIN}'
    )


@pytest.mark.parametrize(
    ("trusted", "hops", "broken"),
    [([], 2, False), ([FORWARDER], 2, True), ([FORWARDER], 1, False)],
)
async def test_without_a_trusted_valid_seal_dmarc_rejects(
    tmp_path: Path, arc_dns: DnsServer, sealer_keys: SealerKeys, trusted: list[str], hops: int,
    broken: bool,
) -> None:  # fmt: skip
    """Nobody trusted; the trusted forwarder's chain broken; a chain sealed by someone else."""
    conf = write_conf(tmp_path, arc_dns, sealer_keys, trusted)
    data = chain(sealer_keys, hops)
    if broken:
        data = data.replace(b"round the houses", b"to the bank")
    verdict, tx = await through_pipeline(conf, data)
    assert verdict is not None and verdict.code == 550
    assert "arc_trusted" not in tx.notes
    assert tx.results["dmarc"].details["override"] == ""


# -- through the SMTP listener -----------------------------------------------------------------


@pytest.fixture
async def app(
    tmp_path: Path, arc_dns: DnsServer, sealer_keys: SealerKeys, smtp_sink: SmtpSink
) -> AsyncIterator[App]:
    conf = write_conf(tmp_path, arc_dns, sealer_keys, [FORWARDER])
    relay = f"{smtp_sink.host}:{smtp_sink.port}"
    app = App(conf, listen="127.0.0.1:0", relay=relay, configure_logs=False)
    await app.start()
    yield app
    await app.stop()


def send(port: int, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo(f"mx.{FORWARDER}")
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        try:
            return client.data(message)
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error if isinstance(error, bytes) else error.encode()


async def test_smtp_forwarded_mail_with_a_trusted_seal_is_delivered_and_sealed(
    app: App, smtp_sink: SmtpSink, arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    code, _ = await asyncio.to_thread(send, app.ports[0], chain(sealer_keys, 2))
    assert code == 250
    [got] = smtp_sink.wait_for_messages(1)
    # The core's Authentication-Results goes on top after the plugins ran; the new ARC set
    # comes right below it, ARC-Seal first.
    head = got.data.split(b"\r\n\r\n", 1)[0]
    fields = [f for f in head.split(b"\r\n") if f[:1] not in (b" ", b"\t")]
    assert fields[0].startswith(b"Authentication-Results: ")
    assert fields[1].startswith(b"ARC-Seal: i=3; cv=pass;")
    assert dkimpy_verdict(arc_dns, got.data) == (b"pass", "success")


async def test_smtp_forwarded_mail_without_a_chain_is_refused(
    app: App, smtp_sink: SmtpSink
) -> None:
    code, text = await asyncio.to_thread(send, app.ports[0], MESSAGE)
    assert (code, text) == (550, REJECTED)
    assert smtp_sink.messages() == []
