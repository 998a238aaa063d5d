"""The dkim plugin's configuration: errors that name the file and the key, the shipped file,
and the parsers under hypothesis (key files, header lists, hostile signatures)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.plugins.dkim import Dkim
from mailgate.plugins.dkim.keys import generate, parse_key
from mailgate.plugins.dkim.sign import header_list
from mailgate.plugins.dkim.verify import verify_message
from tests.peers.dns import DnsServer
from tests.plugins.dkim.conftest import DOMAIN, Keys

ROOT = Path(__file__).resolve().parents[3]


def write(directory: Path, text: str) -> Path:
    path = directory / "85-dkim.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        (
            '[[keys."example.com"]]\nselector = "s1"\nkey_file = "/nonexistent/k"\n',
            "keys.example.com[0].key_file",
            "cannot read /nonexistent/k",
        ),
        (
            '[[keys."example.com"]]\nselector = ""\nkey_file = "/nonexistent/k"\n',
            "keys.example.com[0].selector",
            "is not a DNS label",
        ),
        ('headers = ["Subject"]\n', "headers", "must include From"),
        ('headers = ["From", "Received"]\n', "headers", "received, which must not be signed"),
        ('oversign = ["X-Other"]\n', "oversign", "not in headers"),
        ('sign_when = "clinet.ip == \\"x\\""\n', "sign_when", "unknown variable 'clinet'"),
        ('canonicalization = "relaxed"\n', "canonicalization", "relaxed/relaxed"),
        ("verify_timeout = 0\n", "verify_timeout", "positive"),
        ('unsigned_body = "fail"\n', "unsigned_body", "policy"),
    ],
)
def test_bad_settings_name_file_and_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{path}: {key}:")
    assert says in str(info.value)


def test_a_short_rsa_key_file_is_refused(tmp_path: Path, keys: Keys) -> None:
    path = write(
        tmp_path, f'[[keys."{DOMAIN}"]]\nselector = "w"\nkey_file = "{keys.weak.private_key}"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{path}: keys.{DOMAIN}[0].key_file:")
    assert "RSA key of 512 bits; RFC 8301 requires at least 1024" in str(info.value)


def test_keys_of_every_format_load(tmp_path: Path, keys: Keys) -> None:
    """keygen's PEM (RSA, Ed25519), opendkim-genkey's PEM, and dkimpy's base64 seed."""
    seed = tmp_path / "seed.key"
    seed.write_bytes(base64.b64encode(bytes(range(32))) + b"\n")
    table = "".join(
        f'[[keys."{DOMAIN}"]]\nselector = "{name}"\nkey_file = "{path}"\n'
        for name, path in [
            ("a", keys.rsa.private_key),
            ("b", keys.ed25519.private_key),
            ("c", keys.opendkim.private_key),
            ("d", seed),
        ]
    )
    write(tmp_path, table)
    plugin = load_config(tmp_path).pipeline().plugins[-1].instance
    assert isinstance(plugin, Dkim)
    algorithms = [k.key.algorithm for k in plugin.settings.keys[DOMAIN]]
    assert algorithms == ["rsa-sha256", "ed25519-sha256", "rsa-sha256", "ed25519-sha256"]


def test_shipped_conf_d_file_is_disabled_and_valid(tmp_path: Path) -> None:
    text = (ROOT / "conf.d" / "85-dkim.toml").read_text()
    path = write(tmp_path, text)
    assert load_config(tmp_path).disabled == [("dkim", str(path))]
    write(tmp_path, text.replace("enabled = false", "enabled = true"))
    assert [p.name for p in load_config(tmp_path).pipeline().plugins][-1] == "dkim"


def test_the_loader_hands_the_dns_table_to_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[dns]\nnameservers = ["192.0.2.53:5353"]\n')
    write(tmp_path, "")
    plugin = load_config(tmp_path).pipeline().plugins[-1].instance
    assert isinstance(plugin, Dkim)
    assert plugin.dns.nameservers == ["192.0.2.53:5353"]


# -- parsers under hypothesis -----------------------------------------------------------------


@given(st.binary(max_size=300))
def test_any_bytes_are_a_key_or_a_value_error(data: bytes) -> None:
    try:
        key = parse_key(data)
    except ValueError:
        return
    assert key.algorithm in ("rsa-sha256", "ed25519-sha256")


@given(st.binary(min_size=32, max_size=32))
def test_every_ed25519_seed_round_trips_through_pem(seed: bytes) -> None:
    pem = (
        b"-----BEGIN PRIVATE KEY-----\n"
        + base64.b64encode(bytes.fromhex("302e020100300506032b657004220420") + seed)
        + b"\n-----END PRIVATE KEY-----\n"
    )
    assert parse_key(pem).material == base64.b64encode(seed)


def test_a_generated_ed25519_key_parses() -> None:
    key = parse_key(generate("ed25519").pem)
    assert key.algorithm == "ed25519-sha256"


names = st.sampled_from(["From", "from", "To", "Subject", "Cc", "X-Y", "Date", "Received"])


@given(st.lists(names, max_size=12), st.lists(names, max_size=6))
def test_header_list_covers_each_present_header_and_oversigns(
    present: list[str], oversign: list[str]
) -> None:
    sign = ["From", "To", "Subject", "Cc", "Date"]
    result = header_list(present, sign, oversign)
    lowered = [p.lower() for p in present]
    extra = {o.lower() for o in oversign}
    for name in (s.lower() for s in sign):
        assert result.count(name) == lowered.count(name) + (name in extra)
    assert set(result) <= {s.lower() for s in sign}


tag_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";"),
    max_size=20,
)
signatures = st.lists(
    st.tuples(
        st.sampled_from(["v", "a", "b", "bh", "c", "d", "h", "i", "l", "s", "t", "x"]), tag_values
    ),
    max_size=12,
).map(lambda tags: "; ".join(f"{k}={v}" for k, v in tags))


@settings(max_examples=150, deadline=None)
@given(st.lists(signatures, min_size=1, max_size=3))
def test_hostile_signatures_get_a_result_each_and_never_raise(
    dkim_dns: DnsServer, values: list[str]
) -> None:
    head = "".join(f"DKIM-Signature: {v}\r\n" for v in values)
    data = f"{head}From: a@{DOMAIN}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    results = verify_message(data, dkim_dns.resolver(), timeout=2.0)
    assert len(results) == len(values)
    assert all(
        r.result in ("fail", "neutral", "temperror", "permerror", "policy", "pass") for r in results
    )


def test_a_header_block_dkimpy_cannot_split_is_permerror(dkim_dns: DnsServer) -> None:
    data = b"DKIM-Signature: v=1; d=x.example; s=s\r\nno colon here\r\nFrom: a@x.example\r\n\r\n."
    [result] = verify_message(data, dkim_dns.resolver())
    assert result.result == "permerror"
    assert result.reason.startswith("message not verifiable: ")
    assert result.domain == "x.example"
