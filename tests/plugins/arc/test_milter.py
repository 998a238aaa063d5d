"""The arc plugin on the milter listener behind a real Postfix: the incoming chain is
validated as Postfix handed it over, and the seal goes back as three insert-header actions
(milter protocol 6 and 2) that Postfix writes and dkimpy then validates."""

from __future__ import annotations

import subprocess

import pytest

from mailgate import Transaction, hookimpl
from mailgate.config import load_settings
from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS
from mailgate.pipeline import EnabledPlugin, Pipeline
from mailgate.plugins.arc import Arc, ArcSettings
from tests.milter.gate import open_gate
from tests.milter.test_listener_protocol import connect, serve
from tests.peers.dns import DnsServer
from tests.peers.workdir import PeerDirs
from tests.plugins import messages
from tests.plugins.arc.conftest import (
    FORWARDER,
    OURS,
    SealerKeys,
    chain,
    dkimpy_verdict,
    dns_settings,
)

ARC_NAMES = ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results")


class ResultHeader:
    """Writes the arc result into a header, so the test reads it from the delivered mail."""

    reads: frozenset[str] = frozenset()

    @hookimpl
    def on_message(self, transaction: Transaction) -> None:
        found = transaction.results["arc"]
        sealers = ",".join(found.details["sealers"])
        transaction.add_header("X-Arc-Result", f"{found.result} {sealers}")


@pytest.mark.parametrize("protocol", [6, 2])
def test_a_chain_is_validated_and_sealed_behind_postfix(
    arc_dns: DnsServer, sealer_keys: SealerKeys, peer_dirs: PeerDirs, protocol: int
) -> None:
    table = {
        "seal_when": "true",
        "authserv_id": "mx.mailgate.example.org",
        "seal": {
            "domain": OURS,
            "selector": "seal1",
            "key_file": str(sealer_keys.ours.private_key),
        },
    }
    arc = Arc(load_settings(ArcSettings, table, source="87-arc.toml"), dns=dns_settings(arc_dns))
    incoming = chain(sealer_keys, 2)
    with open_gate(peer_dirs.new("postfix"), [("arc", "inet:127.0.0.1:0")]) as gate:
        gate.chain.use(arc, ResultHeader())
        [route] = [r for r in gate.routes if r.protocol == protocol]
        argv = ["swaks", "--server", f"127.0.0.1:{route.port}", "--from", f"bounce@{FORWARDER}"]
        argv += ["--to", "bob@local.test", "--timeout", "20", "--data", "-"]
        done = subprocess.run(argv, input=incoming, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout
        [delivered] = gate.postfix.wait_for_delivered(1)
    data = delivered.data.replace(b"\n", b"\r\n")
    assert b"X-Arc-Result: pass arc.example.com,fwd.example.net" in data
    assert data.count(b"ARC-Seal: ") == 3
    assert b"ARC-Seal: i=3; cv=pass; a=rsa-sha256; d=mailgate.example.org; s=seal1;" in data
    assert dkimpy_verdict(arc_dns, data) == (b"pass", "success")
    order = [data.index(f"{name}: i=3;".encode()) for name in ARC_NAMES]
    assert order == sorted(order)  # inserted as a block, ARC-Seal on top
    assert data.index(b"ARC-Authentication-Results: i=3;") < data.index(b"ARC-Seal: i=2;")


# -- frame by frame ----------------------------------------------------------------------------


async def test_the_seal_is_three_insert_header_frames(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """An MTA side speaking the codec: the chain's headers and body go in as Postfix sends
    them (leading space kept), three SMFIR_INSHEADER frames come back at index 0, and the
    message rebuilt from them is valid for dkimpy."""
    key = {"domain": OURS, "selector": "seal1", "key_file": str(sealer_keys.ours.private_key)}
    table = {"seal_when": "true", "authserv_id": "mx.mailgate.example.org", "seal": key}
    arc = Arc(load_settings(ArcSettings, table, source="87-arc.toml"), dns=dns_settings(arc_dns))
    incoming = chain(sealer_keys, 2)
    message = messages.make_message(incoming)
    listener = await serve(Pipeline([EnabledPlugin("arc", arc, timeout=30.0)]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), 0))
        assert isinstance(await client.read(), c.OptNegReply)
        frames: list[c.Frame] = [
            c.Connect(b"[198.51.100.25]", b"4", 4000, b"198.51.100.25"),
            c.Mail(f"<bounce@{FORWARDER}>".encode()),
            c.Rcpt(b"<bob@example.org>"),
        ]
        frames += [c.Header(h.name.encode(), h.raw_value.encode()) for h in message.headers]
        frames += [c.EndOfHeaders(), c.Body(b"".join(message.iter_body())), c.EndOfMessage()]
        await client.send(*frames)
        for _ in frames[:-1]:  # one Continue for each step before the end of the message
            assert isinstance(await client.read(), c.Continue)
        replies: list[c.Frame] = []
        while not isinstance(reply := await client.read(), c.Accept | c.Continue):
            replies.append(reply)
    finally:
        await listener.stop()
    inserts = [r for r in replies if isinstance(r, c.InsertHeader)]
    assert [(r.index, r.name.decode()) for r in inserts] == [
        (0, "ARC-Authentication-Results"),
        (0, "ARC-Message-Signature"),
        (0, "ARC-Seal"),
    ]
    rebuilt = incoming  # as Postfix writes an inserted header: "name: value"
    for insert in inserts:
        rebuilt = insert.name + b": " + insert.value.replace(b"\n", b"\r\n") + b"\r\n" + rebuilt
    assert dkimpy_verdict(arc_dns, rebuilt.replace(b"\r\r\n", b"\r\n")) == (b"pass", "success")
