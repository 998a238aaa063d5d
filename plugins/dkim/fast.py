"""A fast check that one DKIM-Signature verifies, for the common case; dkimpy for the rest.

`verifies` answers True only where dkimpy's ``DKIM.verify`` would answer True: it takes the
same steps with dkimpy's own tag parser, signature-field checks and key-record parser, but
canonicalises with `canonical` (only the fields named, each body once per message) and checks
RSA with OpenSSL (the ``cryptography`` package) instead of dkimpy's arithmetic in Python. Any
other answer, or anything unusual on the way, is False, and `verify` then asks dkimpy, so every
failure keeps dkimpy's exception and text. Why: docs/plugins/dkim.md ("Verification speed").
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any

import dkim
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from dkim.util import DuplicateTag, InvalidTagSpec

from mailgate.plugins.dkim.canonical import Algorithm, Field, canonical_body, canonical_field

_ALGORITHMS: dict[bytes, Algorithm] = {b"simple": "simple", b"relaxed": "relaxed"}
_HEADER_LIST = re.compile(rb"\s*:\s*")
_SPACE = re.compile(rb"\s+")
_B_VALUE = re.compile(rb"([;\s]b\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")
"""dkimpy's ``RE_BTAG`` (the value of ``b=``, to be emptied), written without its nested
optional whitespace, which makes it try every character several ways: the same matches."""


class BodyHashes:
    """The SHA-256 of the body of one message, per canonicalisation and ``l=``, computed once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._canonical: dict[Algorithm, bytes] = {}
        self._hashes: dict[tuple[Algorithm, int | None], bytes] = {}

    def canonical(self, algorithm: Algorithm) -> bytes:
        """The body canonicalised by `algorithm`."""
        found = self._canonical.get(algorithm)
        if found is None:
            found = self._canonical[algorithm] = canonical_body(self.body, algorithm)
        return found

    def digest(self, algorithm: Algorithm, length: int | None) -> bytes:
        """SHA-256 of the canonical body, of its first `length` bytes if given."""
        key = (algorithm, length)
        found = self._hashes.get(key)
        if found is None:
            body = self.canonical(algorithm)
            if length is not None:
                body = body[:length]
            found = self._hashes[key] = hashlib.sha256(body).digest()
        return found


def tag_list(value: bytes) -> dict[bytes, bytes]:
    """The tags of a DKIM tag=value list (RFC 6376 3.2), as dkimpy's ``parse_tag_value`` reads
    them (each tag name must start with a letter; values and names stripped; a final ``;``
    allowed), raising its `InvalidTagSpec` and `DuplicateTag` where it raises them; without
    its regular expression per tag, which the module-level ``re.match`` looks up each time."""
    tags: dict[bytes, bytes] = {}
    specs = value.strip().split(b";")
    if not specs[-1]:
        specs.pop()
    for spec in specs:
        name, equals, text = spec.partition(b"=")
        name = name.strip()
        if not equals or not name[:1].isalpha():
            raise InvalidTagSpec(spec)
        if name in tags:
            raise DuplicateTag(name)
        tags[name] = text.strip()
    return tags


def verifies(
    fields: list[Field],
    signature: Field,
    bodies: BodyHashes,
    lookup: Callable[..., bytes | None],
    min_rsa_bits: int,
    tags: dict[bytes, bytes] | None = None,
) -> bool:
    """Whether `signature` (one of `fields`) verifies, where that is simple to tell; False
    means "ask dkimpy", not "fails". `tags`: the signature's tags, if already parsed (with
    `tag_list`)."""
    try:
        return _verifies(fields, signature, bodies, lookup, min_rsa_bits, tags)
    except Exception:
        return False


def _verifies(
    fields: list[Field],
    signature: Field,
    bodies: BodyHashes,
    lookup: Callable[..., bytes | None],
    min_rsa_bits: int,
    parsed: dict[bytes, bytes] | None,
) -> bool:
    tags = tag_list(signature[1]) if parsed is None else parsed
    dkim.validate_signature_fields(tags)
    algorithm = tags[b"a"]
    if algorithm not in (b"rsa-sha256", b"ed25519-sha256"):
        return False
    header_algorithm, body_algorithm = _canonicalization(tags.get(b"c", b"simple/simple"))
    name = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
    record = lookup(name, timeout=5)
    if record is None:
        return False
    key, bits, kind, tlsrpt = dkim.evaluate_pk(name, record)
    if tlsrpt:
        return False
    length = int(tags[b"l"]) if b"l" in tags else None
    expected = base64.b64decode(_SPACE.sub(b"", tags[b"bh"]))
    if bodies.digest(body_algorithm, length) != expected:
        return False
    names = [n.lower() for n in _HEADER_LIST.split(tags[b"h"])]
    if b"from" in names:
        names.append(b"from")  # dkimpy's check for an added From (its bug 644046)
    signed = _signed_bytes(fields, names, signature, header_algorithm)
    value = base64.b64decode(_SPACE.sub(b"", tags[b"b"]))
    if kind == b"rsa":
        return bits >= min_rsa_bits and _rsa_verifies(key, value, signed)
    if kind == b"ed25519":
        try:
            key.verify(hashlib.sha256(signed).digest(), value)
        except nacl.exceptions.BadSignatureError:
            return False
        return True
    return False


def _canonicalization(c: bytes) -> tuple[Algorithm, Algorithm]:
    parts = c.split(b"/")
    if len(parts) == 1:
        parts.append(b"simple")
    if len(parts) != 2:
        raise ValueError("bad c=")
    return _ALGORITHMS[parts[0]], _ALGORITHMS[parts[1]]


def _signed_bytes(
    fields: list[Field], names: list[bytes], signature: Field, algorithm: Algorithm
) -> bytes:
    """What the signature signs: the fields named by ``h=`` (each name takes the last field of
    that name not taken yet), then the signature itself with ``b=`` empty and no final CRLF."""
    untaken: dict[bytes, list[int]] = {}
    for i, (name, _) in enumerate(fields):
        untaken.setdefault(name.lower(), []).append(i)
    parts: list[bytes] = []
    for wanted in names:
        positions = untaken.get(wanted)
        if positions:
            name, value = canonical_field(fields[positions.pop()], algorithm)
            parts += (name, b":", value)
    unsigned = (signature[0], without_b(signature[1]))
    name, value = canonical_field(unsigned, algorithm)
    parts += (name, b":", value.rstrip())
    return b"".join(parts)


def without_b(value: bytes) -> bytes:
    """A DKIM-Signature value with the value of ``b=`` removed, as dkimpy removes it."""
    return _B_VALUE.sub(b"\\1", value)


def _rsa_verifies(key: dict[str, int], signature: bytes, signed: bytes) -> bool:
    public = _rsa_key(key["modulus"], key["publicExponent"])
    try:
        public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _rsa_key(modulus: int, exponent: int) -> Any:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()
