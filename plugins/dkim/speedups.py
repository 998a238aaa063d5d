"""Faster stand-ins for four dkimpy internals, installed once when the plugin is imported.

dkimpy does RSA in pure Python, and converts between integers and bytes one byte at a time:
two such conversions of a 2048-bit number cost more than the modular exponentiation of a
verification. It also parses the key record (and, when signing, the PEM private key) again for
every signature. The stand-ins compute exactly what dkimpy's functions compute (tests compare
them), with ``int.from_bytes``/``int.to_bytes``, and remember parsed keys:

- ``RSASSA_PKCS1_v1_5_verify`` and ``RSASSA_PKCS1_v1_5_sign`` (RFC 8017 8.2), used by DKIM and
  ARC verification and signing;
- ``evaluate_pk`` (the key record: tag list, base64, ASN.1) and ``parse_pem_private_key``,
  cached by their arguments. A cached answer is the same object each time; dkimpy only reads
  it. Errors are not cached.

As with pyspf's ``DNSLookup`` in the spf plugin, dkimpy's module attributes are replaced, so
every user of dkimpy in the process gets the same answers, only sooner.
"""

from __future__ import annotations

import functools
from typing import Any

import dkim
import dkim.crypto

KEY_CACHE_SIZE = 1024
"""Parsed public keys (and private keys) kept; a record that changes is a new entry."""


def rsassa_pkcs1_v1_5_verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """Whether `signature` signs the digest of `hash` with `public_key` (RSASSA-PKCS1-v1_5)."""
    modulus = public_key["modulus"]
    length = (modulus.bit_length() + 7) // 8
    encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(hash, length)
    value = pow(int.from_bytes(signature, "big"), public_key["publicExponent"], modulus)
    return bool(encoded == value.to_bytes(length, "big"))


def rsassa_pkcs1_v1_5_sign(hash: Any, private_key: dict[str, int]) -> bytes:
    """The RSASSA-PKCS1-v1_5 signature of the digest of `hash` (CRT, as dkimpy computes it)."""
    length = (private_key["modulus"].bit_length() + 7) // 8
    encoded = int.from_bytes(dkim.crypto.EMSA_PKCS1_v1_5_encode(hash, length), "big")
    p, q = private_key["prime1"], private_key["prime2"]
    m1 = pow(encoded, private_key["exponent1"], p)
    m2 = pow(encoded, private_key["exponent2"], q)
    h = private_key["coefficient"] * (m1 - m2) % p
    return (m2 + h * q).to_bytes(length, "big")


ORIGINAL = {
    "RSASSA_PKCS1_v1_5_verify": dkim.crypto.RSASSA_PKCS1_v1_5_verify,
    "RSASSA_PKCS1_v1_5_sign": dkim.crypto.RSASSA_PKCS1_v1_5_sign,
    "evaluate_pk": dkim.evaluate_pk,
    "parse_pem_private_key": dkim.parse_pem_private_key,
}
"""dkimpy's own functions, for the tests that compare."""


def install_functions() -> None:
    """Put the RSA stand-ins into dkimpy."""
    dkim.RSASSA_PKCS1_v1_5_verify = rsassa_pkcs1_v1_5_verify
    dkim.RSASSA_PKCS1_v1_5_sign = rsassa_pkcs1_v1_5_sign


def install() -> None:
    """Put the stand-ins and the key caches into dkimpy (idempotent)."""
    install_functions()
    if getattr(dkim, "_mailgate_speedups", False):
        return
    dkim.evaluate_pk = functools.lru_cache(KEY_CACHE_SIZE)(ORIGINAL["evaluate_pk"])
    dkim.parse_pem_private_key = functools.lru_cache(KEY_CACHE_SIZE)(
        ORIGINAL["parse_pem_private_key"]
    )
    dkim._mailgate_speedups = True


install()
