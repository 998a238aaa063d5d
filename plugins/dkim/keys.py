"""DKIM private keys: read a key file, and make a new key pair with its DNS record.

A key file is PEM (``-----BEGIN PRIVATE KEY-----``, PKCS#8, RSA or Ed25519; or
``-----BEGIN RSA PRIVATE KEY-----``, PKCS#1), as ``mailgate dkim keygen``, ``openssl
genpkey`` and ``opendkim-genkey`` write it, or, for Ed25519, dkimpy's base64 seed (one line of
44 characters). The algorithm is read from the file, so a configuration names only the file.
"""

from __future__ import annotations

import base64
import binascii
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nacl.signing
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

# RFC 8410: an Ed25519 PrivateKeyInfo is this fixed prefix and the 32-byte seed.
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")
_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A signing key as dkimpy takes it: PEM for RSA, the base64 seed for Ed25519."""

    algorithm: Algorithm
    material: bytes
    bits: int


def read_key(path: Path) -> PrivateKey:
    """Read the key in `path`; `ValueError` says why it is not a usable DKIM key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_key(data, str(path))


def parse_key(data: bytes, where: str = "key") -> PrivateKey:
    """The key in `data` (see the module docstring for the formats)."""
    pem = _PEM.search(data)
    if pem is None:
        return _ed25519_seed(data.strip(), where)
    try:
        der = base64.b64decode(b"".join(pem.group(2).split()), validate=True)
    except binascii.Error:
        raise ValueError(f"{where}: the PEM block is not valid base64") from None
    if pem.group(1) == b"PRIVATE KEY" and der.startswith(_ED25519_PKCS8) and len(der) == 48:
        return _ed25519_seed(base64.b64encode(der[len(_ED25519_PKCS8) :]), where)
    normalised = _pem(pem.group(1).decode(), der)
    try:
        rsa = parse_pem_private_key(normalised)
    except UnparsableKeyError:
        raise ValueError(f"{where}: neither an RSA nor an Ed25519 private key") from None
    bits = int(rsa["modulus"]).bit_length()
    if bits < 1024:
        raise ValueError(f"{where}: RSA key of {bits} bits; RFC 8301 requires at least 1024")
    return PrivateKey("rsa-sha256", normalised, bits)


def _ed25519_seed(text: bytes, where: str) -> PrivateKey:
    try:
        seed = base64.b64decode(text, validate=True)
    except binascii.Error:
        seed = b""
    if len(seed) != 32:
        raise ValueError(f"{where}: neither a PEM key nor a base64 Ed25519 seed")
    return PrivateKey("ed25519-sha256", base64.b64encode(seed), 256)


# -- a new key ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key pair made by `generate`: the PEM to keep secret and the TXT record to publish."""

    pem: bytes
    record: str


def generate(algorithm: Literal["rsa", "ed25519"], bits: int = 2048) -> NewKey:
    """A new key: Ed25519 from 32 random bytes (PyNaCl), RSA from ``openssl genpkey``."""
    if algorithm == "ed25519":
        signing = nacl.signing.SigningKey.generate()
        der = _ED25519_PKCS8 + bytes(signing)
        public = base64.b64encode(bytes(signing.verify_key)).decode()
        return NewKey(_pem("PRIVATE KEY", der), f"v=DKIM1; k=ed25519; p={public}")
    if bits < 1024:
        raise ValueError(f"RSA keys of {bits} bits are refused (RFC 8301: at least 1024)")
    pem = _openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"])
    der = _openssl(["pkey", "-pubout", "-outform", "DER"], stdin=pem)
    return NewKey(pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")


def _pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode()
    body = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def _openssl(args: list[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    except FileNotFoundError:
        raise RuntimeError("RSA keys are made with the openssl command: not installed") from None
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode().strip()}")
    return done.stdout


def zone_line(domain: str, selector: str, record: str) -> str:
    """The record as a zone-file line, in strings of at most 255 characters (RFC 1035)."""
    chunks = [record[i : i + 255] for i in range(0, len(record), 255)]
    quoted = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {quoted} )"
