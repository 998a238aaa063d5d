"""rspamd 3.4's ARC check (its ``arc`` module, reached through rspamd's milter and mailgate's
milter bridge) as a second, independent validator: it accepts mailgate's seals, and it agrees
with mailgate about a chain broken in transit."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from mailgate import Address, Session, Transaction
from mailgate.config import load_settings
from mailgate.plugins.arc import Arc, ArcSettings
from tests.peers.dns import DnsServer
from tests.peers.rspamd import Rspamd
from tests.peers.smtp_sink import SmtpSink
from tests.plugins import messages
from tests.plugins.arc.conftest import (
    FORWARDER,
    MESSAGE,
    OURS,
    SealerKeys,
    chain,
    dns_settings,
    zone,
)
from tests.plugins.milter.conftest import BridgeFactory, bridge_factory, milter

__all__ = ["bridge_factory"]  # the fixture, asked for by name below


def rspamd_says(rspamd: Rspamd, bridge: BridgeFactory, sink: SmtpSink, data: bytes) -> str:
    """The ``arc=`` part of the Authentication-Results rspamd adds to `data`."""
    gateway = bridge(milter(rspamd.milter))
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.sendmail(f"bounce@{FORWARDER}", ["bob@example.org"], data)
    [got] = sink.wait_for_messages(1)
    sink.clear()
    results = " ".join((got.header("Authentication-Results") or "").split())
    return next((p.strip() for p in results.split(";") if p.strip().startswith("arc=")), "")


async def run_arc(p: Arc, data: bytes) -> Transaction:
    tx = Transaction(Address(f"bounce@{FORWARDER}"))
    tx.message = messages.make_message(data)
    await p.on_message(Session("198.51.100.25"), tx, tx.message)
    return tx


@pytest.fixture
def rspamd_knows_the_keys(rspamd: Rspamd, sealer_keys: SealerKeys) -> Rspamd:
    for key in (sealer_keys.origin, sealer_keys.forwarder, sealer_keys.lists, sealer_keys.ours):
        rspamd.dns.add_zone(zone(key))
    return rspamd


@pytest.mark.parametrize(("hops", "instance"), [(0, 1), (2, 3)])
async def test_rspamd_accepts_our_seal(
    rspamd_knows_the_keys: Rspamd,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
    arc_dns: DnsServer,
    sealer_keys: SealerKeys,
    hops: int,
    instance: int,
) -> None:
    key: dict[str, Any] = {
        "domain": OURS,
        "selector": "seal1",
        "key_file": str(sealer_keys.ours.private_key),
    }
    table = {"seal_when": "true", "authserv_id": "mx.mailgate.example.org", "seal": key}
    p = Arc(load_settings(ArcSettings, table, source="87-arc.toml"), dns=dns_settings(arc_dns))
    data = chain(sealer_keys, hops) if hops else MESSAGE
    sealed = messages.message_bytes(await run_arc(p, data))
    said = rspamd_says(rspamd_knows_the_keys, bridge_factory, smtp_sink, sealed)
    assert said == f'arc=pass ("{OURS}:s=seal1:i={instance}")'


async def test_rspamd_and_mailgate_agree_on_a_broken_chain(
    rspamd_knows_the_keys: Rspamd,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
    arc_dns: DnsServer,
    sealer_keys: SealerKeys,
) -> None:
    broken = chain(sealer_keys, 2).replace(b"round the houses", b"to the bank")
    tx = await run_arc(Arc(ArcSettings(), dns=dns_settings(arc_dns)), broken)
    assert tx.results["arc"].result == "fail"
    said = rspamd_says(rspamd_knows_the_keys, bridge_factory, smtp_sink, broken)
    assert said.startswith("arc=reject ") and f"sig:{FORWARDER}:reject" in said
