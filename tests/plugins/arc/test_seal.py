"""The arc plugin sealing as an intermediary: the set it adds (instance, cv, what its
ARC-Authentication-Results says) checked by dkimpy's ARC validator, and its settings."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate import Address, Session, Transaction
from mailgate.config import ConfigError, load_settings
from mailgate.loader import load_config
from mailgate.modifications import InsertHeader
from mailgate.plugins.arc import Arc, ArcSettings
from tests.peers.dns import DnsServer
from tests.peers.workdir import PeerDirs
from tests.plugins import messages
from tests.plugins.arc.conftest import (
    FORWARDER,
    MESSAGE,
    OURS,
    SealerKeys,
    chain,
    dkimpy_verdict,
    dns_settings,
)

AUTHSERV_ID = "mx.mailgate.example.org"


def seal_table(keys: SealerKeys) -> dict[str, Any]:
    return {"domain": OURS, "selector": "seal1", "key_file": str(keys.ours.private_key)}


def plugin(server: DnsServer, keys: SealerKeys, **settings: Any) -> Arc:
    table = {
        "seal_when": "true",
        "seal": seal_table(keys),
        "authserv_id": AUTHSERV_ID,
        **settings,
    }
    return Arc(load_settings(ArcSettings, table, source="87-arc.toml"), dns=dns_settings(server))


async def run(p: Arc, data: bytes, *, spf: bool = True) -> tuple[Transaction, bytes]:
    """`on_message` (with an spf result before it, as the spf plugin records
    one); the transaction and the message as it would leave."""
    tx = Transaction(Address(f"bounce@{FORWARDER}"), [Address("bob@example.org")])
    tx.message = messages.make_message(data)
    if spf:
        tx.set_result(
            "spf",
            "pass",
            auth_method="spf",
            auth_properties={"smtp.mailfrom": f"bounce@{FORWARDER}"},
        )
    await p.on_message(Session("198.51.100.25", 40000), tx, tx.message)
    return tx, messages.message_bytes(tx)


def top_fields(data: bytes, count: int = 3) -> list[tuple[str, str]]:
    headers = messages.make_message(data).headers[:count]
    return [(h.name, " ".join(h.value.split())) for h in headers]


async def test_a_first_seal_is_i1_cv_none_and_verifies(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    tx, out = await run(plugin(arc_dns, sealer_keys), MESSAGE)
    assert [type(m) for m in tx.modifications] == [InsertHeader] * 3
    names = [name for name, _ in top_fields(out)]
    assert names == ["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]
    seal, ams, aar = (v for _, v in top_fields(out))
    assert seal.startswith(f"i=1; cv=none; a=rsa-sha256; d={OURS}; s=seal1;")
    assert ams.startswith("i=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert aar == (f"i=1; {AUTHSERV_ID}; spf=pass smtp.mailfrom=bounce@{FORWARDER}; arc=none")
    assert dkimpy_verdict(arc_dns, out) == (b"pass", "success")
    assert tx.notes["arc.sealed"] == {"i": 1, "d": OURS, "s": "seal1", "cv": "none"}


async def test_a_passing_chain_is_continued_with_cv_pass(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    _, out = await run(plugin(arc_dns, sealer_keys), chain(sealer_keys, 2))
    seal, _, aar = (v for _, v in top_fields(out))
    assert seal.startswith(f"i=3; cv=pass; a=rsa-sha256; d={OURS};")
    assert "arc=pass header.oldest-pass=1 smtp.remote-ip=198.51.100.25" in aar
    assert dkimpy_verdict(arc_dns, out) == (b"pass", "success")
    # and the plugin itself, as the next hop, agrees
    tx2, _ = await run(Arc(ArcSettings(), dns=dns_settings(arc_dns)), out)
    assert tx2.results["arc"].result == "pass"
    assert tx2.results["arc"].details["sealers"][-1] == OURS


async def test_a_failing_chain_is_sealed_with_cv_fail(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """RFC 8617 5.1.2: cv=fail, and the seal covers its own set only; the chain ends there."""
    broken = chain(sealer_keys, 2).replace(b"round the houses", b"to the bank")
    tx, out = await run(plugin(arc_dns, sealer_keys), broken)
    assert tx.results["arc"].result == "fail"
    seal, _, aar = (v for _, v in top_fields(out))
    assert seal.startswith(f"i=3; cv=fail; a=rsa-sha256; d={OURS};")
    assert "arc=fail reason=" in aar
    cv, reason = dkimpy_verdict(arc_dns, out)
    assert cv is None  # dkimpy's word for "a seal reported failure, the chain is terminated"
    assert reason == "ARC-Seal[3] reported failure, the chain is terminated"
    # Our seal is over its own set only: with the older sets taken out, it verifies.
    message = messages.make_message(out)
    kept = [
        h
        for h in message.headers
        if not (h.name.lower().startswith("arc-") and not h.value.lstrip().startswith("i=3;"))
    ]
    alone = b"".join(h.to_bytes() for h in kept) + b"\r\n" + b"".join(message.iter_body())
    signer = dkim.ARC(alone)
    _, found = signer.sorted_arc_headers()
    checked = signer.verify_instance(found, 3, dnsfunc=_txt(arc_dns))
    assert (checked["as-valid"], checked["ams-valid"]) == (True, True)


def _txt(server: DnsServer) -> Any:
    resolver = server.resolver()

    def txt(name: bytes, timeout: float = 5) -> bytes:
        return b"".join(resolver.resolve(name.decode(), "TXT")[0].strings)

    return txt


async def test_only_mail_chosen_by_seal_when_is_sealed(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    p = plugin(arc_dns, sealer_keys, seal_when='rcpts.exists(r, r.domain == "lists.example")')
    tx, _ = await run(p, MESSAGE)
    assert tx.modifications == []
    assert tx.results["arc"].result == "none"  # verified all the same


async def test_a_seal_only_instance_reuses_the_earlier_result(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """A second arc file after dmarc (``plugin = "arc"``, ``verify = false``) seals with the
    result the first one recorded, and its AAR has what came between (dmarc here)."""
    p = plugin(arc_dns, sealer_keys, verify=False)
    tx = Transaction(Address(f"bounce@{FORWARDER}"))
    data = chain(sealer_keys, 1)
    tx.message = messages.make_message(data)
    tx.set_result("arc", "pass", auth_method="arc", auth_properties={"header.oldest-pass": "1"})
    tx.set_result("dmarc", "fail", auth_method="dmarc", auth_properties={"header.from": "x.org"})
    before = len(arc_dns.queries)
    await p.on_message(Session("198.51.100.25"), tx, tx.message)
    assert len(arc_dns.queries) == before  # not validated again
    out = messages.message_bytes(tx)
    seal, _, aar = (v for _, v in top_fields(out))
    assert seal.startswith("i=2; cv=pass;")
    assert aar == (
        f"i=2; {AUTHSERV_ID}; arc=pass header.oldest-pass=1; dmarc=fail header.from=x.org"
    )
    assert dkimpy_verdict(arc_dns, out) == (b"pass", "success")


async def test_a_chain_at_50_instances_is_not_continued(
    arc_dns: DnsServer, sealer_keys: SealerKeys
) -> None:
    """RFC 8617 4.2.1: no instance above 50. A chain that says it has 50 sets fails (it is
    not real) and dkimpy refuses to add a 51st: nothing is added, nothing breaks."""
    data = chain(sealer_keys, 1).replace(b": i=1;", b": i=50;")
    tx, out = await run(plugin(arc_dns, sealer_keys), data)
    assert tx.results["arc"].result == "fail"
    assert tx.modifications == []
    assert out == data


# -- settings --------------------------------------------------------------------------------


def load(table: dict[str, Any]) -> ArcSettings:
    return load_settings(ArcSettings, table, source="conf.d/87-arc.toml")


def test_seal_when_without_a_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load({"seal_when": "true"})
    text = str(info.value)
    assert "conf.d/87-arc.toml" in text and "seal_when" in text and "[seal] table" in text


def test_an_ed25519_seal_key_is_refused(peer_dirs: PeerDirs) -> None:
    path = peer_dirs.new("arc-ed") / "ed.key"
    subprocess.run(
        [sys.executable, "-m", "mailgate.cli", "dkim", "keygen", "-d", OURS, "-s", "ed2",
         "-a", "ed25519", "-o", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load({"seal": {"domain": OURS, "selector": "ed2", "key_file": str(path)}})
    text = str(info.value)
    assert "seal.key_file" in text and "rsa-sha256 only" in text


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"seal": {"domain": "a@b", "selector": "s", "key_file": "/nonexistent"}},
         "seal.domain", "not a domain name"),
        ({"seal": {"domain": OURS, "selector": "s", "key_file": "/nonexistent"}},
         "seal.key_file", "cannot read /nonexistent"),
        ({"trusted_sealers": ["list@example.org"]}, "trusted_sealers", "is not one"),
        ({"headers": ["Subject"]}, "headers", "must include From"),
        ({"headers": ["From", "Received"]}, "headers", "received, which must not be sealed"),
        ({"authserv_id": "mx example"}, "authserv_id", "host name"),
        ({"trust_when": "client.ip =="}, "trust_when", "valid CEL expression"),
        ({"verify_timeout": 0}, "verify_timeout", "positive"),
    ],
)  # fmt: skip
def test_settings_errors_name_the_key(table: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(table)
    text = str(info.value)
    assert text.startswith("conf.d/87-arc.toml: ")
    assert f" {key}:" in text or f": {key}:" in text, text
    assert words in text, text


def test_the_default_is_verify_only() -> None:
    settings = load({})
    assert settings.verify and settings.seal is None
    assert settings.seal_when.source == "false"


def test_shipped_conf_d_file_is_disabled_and_valid(tmp_path: Path) -> None:
    text = (Path(__file__).parents[3] / "conf.d" / "87-arc.toml").read_text()
    path = tmp_path / "87-arc.toml"
    path.write_text(text)
    assert load_config(tmp_path).disabled == [("arc", str(path))]
    path.write_text(text.replace("enabled = false", "enabled = true"))
    [plugin] = [p for p in load_config(tmp_path).pipeline().plugins if p.name == "arc"]
    assert isinstance(plugin.instance, Arc)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_sealing_a_mangled_chain_never_raises(
    arc_dns: DnsServer, sealer_keys: SealerKeys, data: st.DataObject
) -> None:
    """A chain with random bytes replaced is sealed (cv=fail, most often) or left alone."""
    message = chain(sealer_keys, 2)
    head = message.index(b"\r\nFrom:")
    at = data.draw(st.integers(0, head - 1))
    size = data.draw(st.integers(1, 12))
    junk = data.draw(st.binary(min_size=0, max_size=12).filter(lambda b: b"\n" not in b))
    mangled = message[:at] + junk + message[at + size :]
    tx, _ = asyncio.run(run(plugin(arc_dns, sealer_keys), mangled))
    assert len(tx.modifications) in (0, 3)
