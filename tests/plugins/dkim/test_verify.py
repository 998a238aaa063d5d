"""The dkim plugin verifying: signatures made by opendkim (and by dkimpy where opendkim cannot
make them), keys in a real DNS server, one result per signature."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import dkim
import pytest

from mailgate import Address, Session, Transaction
from mailgate.config import load_settings
from mailgate.plugins.dkim import Dkim, DkimSettings
from tests.peers.dns import DnsServer
from tests.peers.opendkim import DkimKey, OpenDkimFactory
from tests.plugins import messages
from tests.plugins.dkim.conftest import DOMAIN, Keys, Relay, dns_settings, opendkim_signer

MESSAGE = (
    f"From: Alice <alice@{DOMAIN}>\r\nTo: bob@example.org\r\nSubject: verify me\r\n"
    "Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <v1@dkim.example.com>\r\n"
    "\r\nHello Bob,\r\n\r\nsee you.\r\n"
).encode()


def plugin(server: DnsServer | str, timeout: float = 2.0, **settings: Any) -> Dkim:
    """The plugin as a conf.d file would configure it (verification only)."""
    loaded = load_settings(DkimSettings, settings, source="85-dkim.toml")
    if isinstance(server, str):
        return Dkim(loaded, dns=dns_settings_for(server, timeout))
    return Dkim(loaded, dns=dns_settings(server, timeout))


def dns_settings_for(address: str, timeout: float) -> Any:
    from mailgate.dns import DnsSettings

    return DnsSettings(nameservers=[address], timeout=timeout)


async def verify(p: Dkim, data: bytes) -> Transaction:
    """Run the plugin's `on_message` on `data`; the transaction with its results."""
    tx = Transaction(Address(f"alice@{DOMAIN}"))
    tx.message = messages.make_message(data)
    session = Session("192.0.2.1", 40000, helo="client.example")
    await p.on_message(session, tx, tx.message)
    return tx


def dkimpy_sign(key: DkimKey, data: bytes, **options: Any) -> bytes:
    """`data` with a signature made by dkimpy (for what opendkim does not offer: l=)."""
    signature = dkim.sign(
        data,
        key.selector.encode(),
        key.domain.encode(),
        key.private_key.read_bytes(),
        include_headers=[b"from", b"to", b"subject"],
        **options,
    )
    return bytes(signature) + data


def entries(tx: Transaction) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = tx.results["dkim"].details["auth_results"]
    assert tx.results["dkim"].details["signatures"] == found
    return found


@pytest.fixture
def signed(opendkim_factory: OpenDkimFactory, keys: Keys, through_milter: Relay) -> bytes:
    """MESSAGE signed by opendkim with the od1 key (opendkim-genkey, 2048 bits)."""
    return through_milter(opendkim_signer(opendkim_factory, keys.opendkim), MESSAGE)


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """A name server that reads queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_an_opendkim_signature_passes(dkim_dns: DnsServer, signed: bytes) -> None:
    tx = await verify(plugin(dkim_dns), signed)
    result = tx.results["dkim"]
    assert result.result == "pass"
    [entry] = entries(tx)
    [value] = messages.make_message(signed).get_all("DKIM-Signature")
    b = dkim.util.parse_tag_value(value.encode())[b"b"]
    assert entry == {
        "method": "dkim",
        "result": "pass",
        "reason": "",
        "properties": {
            "header.d": DOMAIN,
            "header.i": f"@{DOMAIN}",
            "header.s": "od1",
            "header.a": "rsa-sha256",
            "header.b": "".join(b.decode().split())[:8],
        },
    }
    asked = {(q.name, q.rdtype) for q in dkim_dns.queries}
    assert ("od1._domainkey.dkim.example.com.", "TXT") in asked


async def test_no_signature_is_none(dkim_dns: DnsServer) -> None:
    tx = await verify(plugin(dkim_dns), MESSAGE)
    assert tx.results["dkim"].result == "none"
    assert entries(tx) == []


async def test_a_changed_body_fails(dkim_dns: DnsServer, signed: bytes) -> None:
    tx = await verify(plugin(dkim_dns), signed.replace(b"see you", b"pay me"))
    assert tx.results["dkim"].result == "fail"
    assert entries(tx)[0]["reason"] == "body hash did not verify"


async def test_a_changed_header_fails(dkim_dns: DnsServer, signed: bytes) -> None:
    tx = await verify(plugin(dkim_dns), signed.replace(b"verify me", b"wire money"))
    assert tx.results["dkim"].result == "fail"
    assert entries(tx)[0]["reason"] == "signature did not verify"


async def test_every_signature_has_its_result(
    dkim_dns: DnsServer,
    keys: Keys,
    opendkim_factory: OpenDkimFactory,
    through_milter: Relay,
) -> None:
    """Three signatures: a good one by opendkim, one whose key is missing, one broken after
    signing; the pass speaks for the message and each keeps its own result."""
    good = through_milter(opendkim_signer(opendkim_factory, keys.opendkim), MESSAGE)
    missing = DkimKey(DOMAIN, "nokey", keys.rsa.private_key, "")
    both = dkimpy_sign(missing, good)
    broken = dkimpy_sign(keys.rsa, both).replace(b"bh=", b"bh=AAAA", 1)
    tx = await verify(plugin(dkim_dns), broken)
    assert tx.results["dkim"].result == "pass"
    found = [(e["properties"]["header.s"], e["result"]) for e in entries(tx)]
    assert found == [("rsa1", "fail"), ("nokey", "permerror"), ("od1", "pass")]
    reasons = [e["reason"] for e in entries(tx)]
    assert reasons[1] == "no key for signature"


async def test_without_a_pass_the_worst_failure_speaks(dkim_dns: DnsServer, keys: Keys) -> None:
    missing = DkimKey(DOMAIN, "nokey", keys.rsa.private_key, "")
    data = dkimpy_sign(missing, dkimpy_sign(keys.rsa, MESSAGE).replace(b"Bob", b"Eve"))
    tx = await verify(plugin(dkim_dns), data)
    assert [e["result"] for e in entries(tx)] == ["permerror", "fail"]
    assert tx.results["dkim"].result == "fail"
    assert tx.results["dkim"].reason == f"{DOMAIN} (rsa1): body hash did not verify"


async def test_ed25519_signature_passes(dkim_dns: DnsServer, keys: Keys) -> None:
    from mailgate.plugins.dkim.keys import read_key

    seed = read_key(keys.ed25519.private_key).material
    signature = dkim.sign(
        MESSAGE, b"ed1", DOMAIN.encode(), seed, signature_algorithm=b"ed25519-sha256"
    )
    tx = await verify(plugin(dkim_dns), bytes(signature) + MESSAGE)
    [entry] = entries(tx)
    assert (entry["result"], entry["properties"]["header.a"]) == ("pass", "ed25519-sha256")


async def test_a_512_bit_key_fails(dkim_dns: DnsServer, keys: Keys) -> None:
    """opendkim refuses to sign with a 512-bit key ("DKIM signing error"); dkimpy does."""
    data = dkimpy_sign(keys.weak, MESSAGE)
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert entry["result"] == "fail"
    assert entry["reason"] == "key too small: 512 bits (RFC 8301 requires 1024)"


def as_selector(key: DkimKey, selector: str) -> DkimKey:
    """`key` signing under another selector (the zone has testing and revoked records)."""
    return DkimKey(key.domain, selector, key.private_key, key.record)


async def test_testing_mode_pass_says_so_and_failure_is_neutral(
    dkim_dns: DnsServer, keys: Keys, opendkim_factory: OpenDkimFactory, through_milter: Relay
) -> None:
    testing = as_selector(keys.opendkim, "testing")
    data = through_milter(opendkim_signer(opendkim_factory, testing), MESSAGE)
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert (entry["result"], entry["reason"]) == ("pass", "key in testing mode (t=y)")
    tx = await verify(plugin(dkim_dns), data.replace(b"see you", b"pay me"))
    [entry] = entries(tx)
    assert entry["result"] == "neutral"
    assert entry["reason"] == "key in testing mode (t=y); body hash did not verify"
    assert tx.results["dkim"].result == "neutral"


async def test_a_revoked_key_is_permerror(
    dkim_dns: DnsServer, keys: Keys, opendkim_factory: OpenDkimFactory, through_milter: Relay
) -> None:
    revoked = as_selector(keys.opendkim, "revoked")
    data = through_milter(opendkim_signer(opendkim_factory, revoked), MESSAGE)
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert (entry["result"], entry["reason"]) == ("permerror", "key revoked")


async def test_body_length_with_appended_content(dkim_dns: DnsServer, keys: Keys) -> None:
    data = dkimpy_sign(keys.rsa, MESSAGE, length=True)
    tx = await verify(plugin(dkim_dns), data)
    assert tx.results["dkim"].result == "pass"
    appended = data + b"\r\nClick here: https://evil.example/\r\n"
    tx = await verify(plugin(dkim_dns), appended)
    [entry] = entries(tx)
    assert entry["result"] == "policy"
    assert entry["reason"].startswith("37 bytes of the body follow the signed part (l=24)")
    tx = await verify(plugin(dkim_dns, unsigned_body="pass"), appended)
    assert tx.results["dkim"].result == "pass"


async def test_an_expired_signature_is_policy(dkim_dns: DnsServer, keys: Keys) -> None:
    past = int(time.time()) - 60
    data = dkimpy_sign(keys.rsa, MESSAGE).replace(b"v=1;", f"v=1; x={past};".encode(), 1)
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert (entry["result"], entry["reason"]) == ("policy", f"signature expired (x={past})")


async def test_a_future_timestamp_is_permerror(dkim_dns: DnsServer, keys: Keys) -> None:
    future = int(time.time()) + 86400 * 7
    data = re.sub(rb"t=\d+;", f"t={future};".encode(), dkimpy_sign(keys.rsa, MESSAGE), count=1)
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert entry["result"] == "permerror"
    assert "t= value is in the future" in entry["reason"]


async def test_rsa_sha1_is_policy(dkim_dns: DnsServer, keys: Keys) -> None:
    data = dkimpy_sign(keys.rsa, MESSAGE, signature_algorithm=b"rsa-sha1")
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert (entry["result"], entry["properties"]["header.a"]) == ("policy", "rsa-sha1")


async def test_a_malformed_signature_is_permerror(dkim_dns: DnsServer) -> None:
    data = b"DKIM-Signature: this is not a tag list\r\n" + MESSAGE
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert entry["result"] == "permerror"


async def test_a_key_of_the_wrong_type_is_permerror(dkim_dns: DnsServer, keys: Keys) -> None:
    data = dkimpy_sign(keys.rsa, MESSAGE).replace(b"s=rsa1", b"s=ed1", 1)
    tx = await verify(plugin(dkim_dns), data)
    [entry] = entries(tx)
    assert (entry["result"], entry["reason"]) == (
        "permerror",
        "key type ed25519 does not match a=rsa-sha256",
    )


async def test_a_dns_timeout_is_temperror(silent_dns: str, keys: Keys) -> None:
    data = dkimpy_sign(keys.rsa, MESSAGE)
    tx = await verify(plugin(silent_dns, timeout=0.3), data)
    [entry] = entries(tx)
    assert entry["result"] == "temperror"
    assert entry["reason"].startswith("key unavailable: ")
    assert tx.results["dkim"].result == "temperror"


async def test_verify_timeout_bounds_all_lookups(silent_dns: str, keys: Keys) -> None:
    data = MESSAGE
    for _ in range(4):
        data = dkimpy_sign(keys.rsa, data)
    p = plugin(silent_dns, timeout=5.0, verify_timeout=0.5)
    started = time.monotonic()
    tx = await verify(p, data)
    assert time.monotonic() - started < 2.0
    assert [e["result"] for e in entries(tx)] == ["temperror"] * 4


async def test_signatures_past_max_signatures_are_not_verified(
    dkim_dns: DnsServer, keys: Keys
) -> None:
    data = MESSAGE
    for _ in range(3):
        data = dkimpy_sign(keys.rsa, data)
    tx = await verify(plugin(dkim_dns, max_signatures=2), data)
    assert [e["result"] for e in entries(tx)] == ["pass", "pass", "policy"]
    assert entries(tx)[2]["reason"] == "not verified: more than 2 signatures"


async def test_a_key_restricted_to_sha1_is_permerror(dkim_dns: DnsServer, keys: Keys) -> None:
    data = dkimpy_sign(as_selector(keys.rsa, "sha1only"), MESSAGE)
    [entry] = entries(await verify(plugin(dkim_dns), data))
    assert (entry["result"], entry["reason"]) == ("permerror", "key allows h=sha1 only")


async def test_a_strict_key_refuses_a_subdomain_identity(dkim_dns: DnsServer, keys: Keys) -> None:
    strict = as_selector(keys.rsa, "strict")
    [entry] = entries(await verify(plugin(dkim_dns), dkimpy_sign(strict, MESSAGE)))
    assert entry["result"] == "pass"
    data = dkimpy_sign(strict, MESSAGE, identity=f"@news.{DOMAIN}".encode())
    [entry] = entries(await verify(plugin(dkim_dns), data))
    assert entry["result"] == "permerror"
    assert entry["reason"].startswith("key is strict (t=s)")


async def test_keys_in_the_cache_give_the_same_results_without_a_lookup(
    dkim_dns: DnsServer, keys: Keys, signed: bytes
) -> None:
    """The second time, every key is in the DNS cache: the plugin verifies in the event loop
    (no worker thread, no query) and every result and reason is the same as the first time."""
    p = plugin(dkim_dns)
    cases = [
        signed,
        signed.replace(b"see you", b"pay me"),
        signed.replace(b"verify me", b"wire money"),
        dkimpy_sign(keys.weak, MESSAGE),
        dkimpy_sign(keys.rsa, MESSAGE, length=True) + b"appended\r\n",
        dkimpy_sign(as_selector(keys.rsa, "nosuchkey"), MESSAGE),
    ]
    first = [entries(await verify(p, data)) for data in cases]
    queries = len(dkim_dns.queries)
    again = [entries(await verify(p, data)) for data in cases]
    assert again == first
    assert len(dkim_dns.queries) == queries
    assert [e[0]["result"] for e in first] == [
        "pass",
        "fail",
        "fail",
        "fail",
        "policy",
        "permerror",
    ]


async def test_a_cached_key_needs_no_worker_thread(
    dkim_dns: DnsServer, signed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = plugin(dkim_dns)
    first = entries(await verify(p, signed))  # the key is looked up, in a worker thread

    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a worker thread was used")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    assert entries(await verify(p, signed)) == first
    too_large = signed + b"x" * 200_000 + b"\r\n"  # over the in-loop limit: a thread
    with pytest.raises(AssertionError, match="worker thread"):
        await verify(p, too_large)
