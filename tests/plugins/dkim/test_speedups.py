"""The stand-ins of plugins/dkim/speedups.py answer exactly as dkimpy's own functions do."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dkim
import dkim.crypto
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.plugins.dkim import speedups
from mailgate.plugins.dkim.keys import generate


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, int], bytes]]:
    """(private key data, public key record) for RSA keys of 1024, 1536 and 2048 bits."""
    keys = []
    for bits in (1024, 1536, 2048):
        new = generate("rsa", bits)
        private = dkim.crypto.parse_pem_private_key(new.pem)
        keys.append((private, new.record.encode()))
    return keys


def test_the_stand_ins_are_installed() -> None:
    assert dkim.RSASSA_PKCS1_v1_5_verify is speedups.rsassa_pkcs1_v1_5_verify
    assert dkim.RSASSA_PKCS1_v1_5_sign is speedups.rsassa_pkcs1_v1_5_sign
    speedups.install()  # a second time changes nothing
    assert dkim.RSASSA_PKCS1_v1_5_verify is speedups.rsassa_pkcs1_v1_5_verify


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=200), which=st.integers(0, 2), flip=st.integers(0, 2047))
def test_sign_and_verify_give_dkimpys_answers(
    rsa_keys: list[tuple[dict[str, int], bytes]], data: bytes, which: int, flip: int
) -> None:
    private, record = rsa_keys[which]
    public, _, _, _ = speedups.ORIGINAL["evaluate_pk"](b"k", record)
    digest = hashlib.sha256(data)
    signature = speedups.rsassa_pkcs1_v1_5_sign(digest.copy(), private)
    assert signature == bytes(speedups.ORIGINAL["RSASSA_PKCS1_v1_5_sign"](digest.copy(), private))
    assert speedups.rsassa_pkcs1_v1_5_verify(digest.copy(), signature, public)
    broken = bytearray(signature)
    broken[flip % len(broken)] ^= 1 << (flip % 8)
    for candidate in (bytes(broken), signature[:-1], b"", signature + b"\x00"):
        ours = speedups.rsassa_pkcs1_v1_5_verify(digest.copy(), candidate, public)
        theirs = speedups.ORIGINAL["RSASSA_PKCS1_v1_5_verify"](digest.copy(), candidate, public)
        assert ours == bool(theirs)
        assert not ours


def test_a_digest_too_large_for_the_key_raises_as_in_dkimpy() -> None:
    public = {"modulus": (1 << 255) + 1, "publicExponent": 65537}
    digest = hashlib.sha256(b"x")
    with pytest.raises(dkim.crypto.DigestTooLargeError):
        speedups.ORIGINAL["RSASSA_PKCS1_v1_5_verify"](digest.copy(), b"\x01" * 32, public)
    with pytest.raises(dkim.crypto.DigestTooLargeError):
        speedups.rsassa_pkcs1_v1_5_verify(digest.copy(), b"\x01" * 32, public)


def test_key_records_are_parsed_once_and_errors_are_not_kept(tmp_path: Path) -> None:
    record = generate("ed25519").record.encode()
    first = dkim.evaluate_pk(b"s._domainkey.example.org", record)
    assert dkim.evaluate_pk(b"s._domainkey.example.org", record) is first
    for _ in range(2):
        with pytest.raises(dkim.KeyFormatError):
            dkim.evaluate_pk(b"bad._domainkey.example.org", b"v=DKIM1; k=rsa; p=AAAA")


def test_a_signature_made_with_the_stand_ins_verifies_with_dkimpys_own(tmp_path: Path) -> None:
    """A whole DKIM signature, opendkim-genkey's key: made with the stand-ins, checked by
    dkimpy's own verification (and the other way round)."""
    subprocess.run(
        ["opendkim-genkey", "-b", "2048", "-d", "example.org", "-s", "s", "-D", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    pem = (tmp_path / "s.private").read_bytes()
    record = "".join((tmp_path / "s.txt").read_text().split('"')[1::2]).encode()
    message = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"

    def dns(name: bytes, timeout: float = 5) -> bytes:
        assert name == b"s._domainkey.example.org."
        return record

    ours = dkim.sign(message, b"s", b"example.org", pem, include_headers=[b"from"])
    try:
        dkim.RSASSA_PKCS1_v1_5_verify = speedups.ORIGINAL["RSASSA_PKCS1_v1_5_verify"]
        dkim.RSASSA_PKCS1_v1_5_sign = speedups.ORIGINAL["RSASSA_PKCS1_v1_5_sign"]
        assert dkim.verify(ours + message, dnsfunc=dns)
        assert not dkim.verify(ours + message.replace(b"body", b"BODY"), dnsfunc=dns)
        theirs = dkim.sign(message, b"s", b"example.org", pem, include_headers=[b"from"])
    finally:
        speedups.install_functions()
    assert dkim.verify(theirs + message, dnsfunc=dns)
    assert not dkim.verify(theirs + message.replace(b"x", b"y"), dnsfunc=dns)
