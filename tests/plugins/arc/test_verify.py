"""The arc plugin validating chains made by dkimpy over one to three hops, keys in the test DNS:
what passes, what fails and why, what is recorded, and who is trusted."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate import Address, Session, Transaction
from mailgate.config import load_settings
from mailgate.plugins.arc import Arc, ArcSettings
from mailgate.plugins.arc.chain import validate
from tests.peers.dns import DnsServer
from tests.plugins import messages
from tests.plugins.arc.conftest import (
    FORWARDER,
    LIST,
    MESSAGE,
    ORIGIN,
    SealerKeys,
    chain,
    dkimpy_verdict,
    dns_settings,
    hop,
)


def plugin(server: DnsServer | str, timeout: float = 2.0, **settings: Any) -> Arc:
    loaded = load_settings(ArcSettings, settings, source="87-arc.toml")
    return Arc(loaded, dns=dns_settings(server, timeout))


async def verify(p: Arc, data: bytes, *, ip: str = "198.51.100.25") -> Transaction:
    tx = Transaction(Address(f"alice@{ORIGIN}"), [Address(f"bob@{FORWARDER}")])
    tx.message = messages.make_message(data)
    await p.on_message(Session(ip, 40000), tx, tx.message)
    return tx


def cvs(tx: Transaction) -> list[tuple[int, str, str, str]]:
    chain_ = tx.results["arc"].details["chain"]
    return [(s["instance"], s["domain"], s["cv"], s["result"]) for s in chain_]


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """A name server that reads queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("hops", [1, 2, 3])
async def test_a_valid_chain_passes(arc_dns: DnsServer, sealer_keys: SealerKeys, hops: int) -> None:
    data = chain(sealer_keys, hops)
    assert dkimpy_verdict(arc_dns, data)[0] == b"pass"
    tx = await verify(plugin(arc_dns), data)
    result = tx.results["arc"]
    assert (result.result, result.reason) == ("pass", "")
    sealers = [ORIGIN, FORWARDER, LIST][:hops]
    assert result.details["sealers"] == sealers
    assert cvs(tx) == [
        (i + 1, d, "none" if i == 0 else "pass", "pass") for i, d in enumerate(sealers)
    ]
    assert result.details["auth_method"] == "arc"
    assert result.details["auth_properties"] == {
        "header.oldest-pass": "1",
        "smtp.remote-ip": "198.51.100.25",
    }
    assert result.details["temporary"] is False
    asked = {q.name for q in arc_dns.queries}
    assert f"fwd1._domainkey.{FORWARDER}." in asked or hops == 1


async def test_no_arc_headers_is_none(arc_dns: DnsServer) -> None:
    tx = await verify(plugin(arc_dns), MESSAGE)
    result = tx.results["arc"]
    assert (result.result, result.details["chain"], result.details["sealers"]) == ("none", [], [])
    assert result.details["auth_properties"] == {}


async def test_a_modified_seal_fails(arc_dns: DnsServer, sealer_keys: SealerKeys) -> None:
    """A changed ARC-Seal (here its timestamp) breaks it, and every newer seal that covers it."""
    data = chain(sealer_keys, 2)
    for instance in (2, 1):
        seal = re.compile(rb"(ARC-Seal: i=%d; cv=\w+; a=\S+; d=\S+; s=\w+;\r\n t=)1" % instance)
        broken = seal.sub(rb"\g<1>0", data)
        assert broken != data
        assert dkimpy_verdict(arc_dns, broken)[0] == b"fail"
        tx = await verify(plugin(arc_dns), broken)
        assert tx.results["arc"].result == "fail"
        assert tx.results["arc"].reason == f"ARC-Seal i=2 ({FORWARDER}) did not verify"
        assert cvs(tx)[1][3] == "fail"
        assert tx.results["arc"].details["auth_properties"] == {}


async def test_a_body_changed_after_sealing_fails(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    data = chain(sealer_keys, 2).replace(b"round the houses", b"to the bank")
    assert dkimpy_verdict(arc_dns, data)[0] == b"fail"
    tx = await verify(plugin(arc_dns), data)
    assert tx.results["arc"].result == "fail"
    reason = f"ARC-Message-Signature i=2 ({FORWARDER}) did not verify"
    assert tx.results["arc"].reason == reason


async def test_an_older_signature_may_break_if_the_newest_holds(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """A list changes the subject, then seals: i=1's signature breaks, the chain still passes,
    and header.oldest-pass says from where the message is as sealed (RFC 8617 5.2 step 4)."""
    first = hop(MESSAGE, sealer_keys.origin, "none")
    changed = first.replace(b"Subject: forwarded", b"Subject: [list] forwarded")
    data = hop(changed, sealer_keys.lists, "pass")
    tx = await verify(plugin(arc_dns), data)
    assert tx.results["arc"].result == "pass"
    chain_ = tx.results["arc"].details["chain"]
    assert [(s["signature"], s["result"]) for s in chain_] == [("fail", "pass"), ("pass", "pass")]
    assert tx.results["arc"].details["auth_properties"]["header.oldest-pass"] == "2"


async def test_cv_fail_in_the_chain_fails_without_a_lookup(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """A hop that found the chain broken seals with cv=fail: the chain ends there."""
    first = hop(MESSAGE, sealer_keys.origin, "none").replace(b"round the", b"round a")
    data = hop(first, sealer_keys.forwarder, "fail")
    assert b"cv=fail" in data
    before = len(arc_dns.queries)
    tx = await verify(plugin(arc_dns), data)
    assert tx.results["arc"].result == "fail"
    assert tx.results["arc"].reason == "ARC-Seal i=2 says cv=fail: the chain ended there"
    assert len(arc_dns.queries) == before


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ((b"cv=pass", b"cv=none"), "ARC-Seal i=2 says cv=none, not pass"),
        ((b"cv=pass", b"cv=maybe"), "ARC-Seal i=2 says cv=maybe, not pass"),
        ((b"cv=none", b"cv=pass"), "ARC-Seal i=1 says cv=pass, not none"),
        ((b"ARC-Seal: i=2", b"ARC-Seal: i=3"), "instance i=2 has 0 ARC-Seal fields, not one"),
        ((b"a=rsa-sha256", b"a=rsa-sha1"), "ARC-Seal i=2 uses a=rsa-sha1"),
        ((b"ARC-Seal: i=2", b"ARC-Seal: i=51"), "ARC-Seal i=51 is outside 1..50"),
        ((b"ARC-Seal: i=2", b"ARC-Seal: i=0"), "ARC-Seal i=0 is outside 1..50"),
        ((b"ARC-Seal: i=2", b"ARC-Seal: i=1"), "instance i=1 has 2 ARC-Seal fields, not one"),
        ((b"ARC-Authentication-Results: i=2", b"ARC-Authentication-Results: x=2"),
         "an ARC-Authentication-Results field has no valid i= tag"),
    ],
)  # fmt: skip
async def test_a_malformed_chain_fails(
    arc_dns: DnsServer, sealer_keys: SealerKeys, edit: tuple[bytes, bytes], reason: str
) -> None:
    """RFC 8617 5.2's form rules, checked before any lookup, each with its own reason."""
    data = chain(sealer_keys, 2).replace(*edit, 1)
    tx = await verify(plugin(arc_dns), data)
    assert (tx.results["arc"].result, tx.results["arc"].reason) == ("fail", reason)


async def test_a_signature_field_without_a_space_after_the_colon_passes(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """``ARC-Message-Signature:i=2;`` is the same field under relaxed canonicalization (dkimpy
    alone raises IndexError on it)."""
    data = chain(sealer_keys, 2).replace(b"ARC-Message-Signature: i=", b"ARC-Message-Signature:i=")
    with pytest.raises(IndexError):
        dkimpy_verdict(arc_dns, data)
    tx = await verify(plugin(arc_dns), data)
    assert (tx.results["arc"].result, tx.results["arc"].reason) == ("pass", "")


def test_a_header_block_starting_with_a_continuation_line_fails(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """Found by the test below: dkimpy raises IndexError reading such a header block."""
    data = chain(sealer_keys, 2).removeprefix(b"ARC-Seal:")
    found = validate(data, arc_dns.resolver())
    assert found.result == "fail"
    assert found.reason == "message not verifiable: IndexError: list index out of range"


async def test_a_gap_in_the_instances_fails(arc_dns: DnsServer, sealer_keys: SealerKeys) -> None:
    data = re.sub(rb"(ARC-[A-Za-z-]+: )i=2;", rb"\g<1>i=3;", chain(sealer_keys, 2))
    tx = await verify(plugin(arc_dns), data)
    assert tx.results["arc"].reason == "instances run to i=3 without i=2"


async def test_a_missing_key_fails(arc_dns: DnsServer, sealer_keys: SealerKeys) -> None:
    data = chain(sealer_keys, 2).replace(b"s=fwd1", b"s=gone")
    tx = await verify(plugin(arc_dns), data)
    assert tx.results["arc"].result == "fail"
    assert tx.results["arc"].details["temporary"] is False


async def test_a_dns_timeout_fails_and_says_it_was_temporary(
    silent_dns: str, sealer_keys: SealerKeys
) -> None:
    """RFC 8617 has no temperror for a chain: none, pass or fail. A lookup that times out
    fails the chain, and the record says it was temporary."""
    tx = await verify(plugin(silent_dns, timeout=0.3), chain(sealer_keys, 1))
    result = tx.results["arc"]
    assert result.result == "fail"
    assert result.details["temporary"] is True
    assert "key lookup failed for now" in result.reason


async def test_verify_timeout_bounds_all_lookups(silent_dns: str, sealer_keys: SealerKeys) -> None:
    p = plugin(silent_dns, timeout=5.0, verify_timeout=0.5)
    started = time.monotonic()
    tx = await verify(p, chain(sealer_keys, 3))
    assert time.monotonic() - started < 2.0
    assert tx.results["arc"].result == "fail"


async def test_a_trusted_newest_sealer_is_noted(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    data = chain(sealer_keys, 3)
    tx = await verify(plugin(arc_dns, trusted_sealers=["example.org"]), data)
    assert tx.notes["arc_trusted"] == LIST
    assert tx.results["arc_trusted"].result == "pass"
    assert tx.results["arc_trusted"].details["sealer"] == LIST


@pytest.mark.parametrize(
    ("hops", "settings"),
    [
        (3, {"trusted_sealers": [FORWARDER]}),  # trusted, but not the newest sealer
        (3, {"trusted_sealers": ["example.org"], "trust_when": 'client.ip == "192.0.2.99"'}),
        (2, {"trusted_sealers": ["other.example"]}),
    ],
)
async def test_other_sealers_are_not_trusted(
    arc_dns: DnsServer, sealer_keys: SealerKeys, hops: int, settings: dict[str, Any]
) -> None:
    tx = await verify(plugin(arc_dns, **settings), chain(sealer_keys, hops))
    assert tx.results["arc"].result == "pass"
    assert "arc_trusted" not in tx.notes
    assert "arc_trusted" not in tx.results


async def test_a_failing_chain_is_never_trusted(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    data = chain(sealer_keys, 3).replace(b"round the", b"round a")
    tx = await verify(plugin(arc_dns, trusted_sealers=[LIST]), data)
    assert tx.results["arc"].result == "fail"
    assert "arc_trusted" not in tx.notes


async def test_the_chain_is_checked_as_it_arrived(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """A plugin before arc that changes a signed header does not break the incoming chain."""
    data = chain(sealer_keys, 2)
    tx = Transaction(Address(f"alice@{ORIGIN}"))
    tx.message = messages.make_message(data)
    p = plugin(arc_dns)
    tx.change_header("Subject", "[EXTERNAL] forwarded")
    await p.on_message(Session("192.0.2.1"), tx, tx.message)
    assert tx.results["arc"].result == "pass"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_mangled_chain_never_raises(
    arc_dns: DnsServer, sealer_keys: SealerKeys, data: st.DataObject
) -> None:
    """Bytes of the ARC header block replaced at random: the result is always one of the
    three, and the plugin never raises (dkimpy's parsers do, on some of these)."""
    message = chain(sealer_keys, 2)
    head = message.index(b"\r\nFrom:")
    at = data.draw(st.integers(0, head - 1))
    size = data.draw(st.integers(1, 12))
    junk = data.draw(st.binary(min_size=0, max_size=12).filter(lambda b: b"\n" not in b))
    mangled = message[:at] + junk + message[at + size :]
    found = validate(mangled, arc_dns.resolver(), timeout=5.0)
    assert found.result in ("none", "pass", "fail")
