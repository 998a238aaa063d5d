"""The Sender Rewriting Scheme in the Shevek/libsrs2 format (what postsrsd speaks).

Forward, by a forwarder whose SRS domain is ``fwd.example``:

- ``local@domain`` becomes ``SRS0=HHHH=TT=domain=local@fwd.example``;
- ``SRS0=HHHH=TT=domain=local@first.example`` (already rewritten once) becomes
  ``SRS1=GGGG=first.example==HHHH=TT=domain=local@fwd.example``;
- ``SRS1=XXXX=first.example==rest@other.example`` becomes
  ``SRS1=GGGG=first.example==rest@fwd.example`` (the first forwarder is kept).

``TT`` is the day the address was made (days since 1970, modulo 1024) as two base32 letters;
``HHHH`` is the start of the base64 HMAC-SHA1, keyed with the secret, of the lower-cased
``TT``, ``domain`` and ``local`` (for SRS1: of the first forwarder and the rest). Reversing
checks the hash (without regard to case, the first `hash_min` or more letters) against every
secret, and an SRS0 address's age; SRS0 gives back ``local@domain``, SRS1 the SRS0 address at
the first forwarder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

TIME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
"""libsrs2's base32 digits for the timestamp."""
TIME_SLOTS = 1024
"""Timestamps count days modulo this (two base32 digits)."""
DAY = 86400
SEPARATORS = "=+-"
"""What may follow ``SRS0``/``SRS1``; inside the address the separator is always ``=``."""


class SrsError(ValueError):
    """An SRS address that cannot be reversed; the message says why."""


def is_srs(local: str) -> bool:
    """True if the local part `local` looks like an SRS0 or SRS1 address."""
    return (
        len(local) > 4
        and local[:3].upper() == "SRS"
        and local[3] in "01"
        and (local[4] in SEPARATORS)
    )


def timestamp(now: float) -> str:
    """The two-letter timestamp of the day of `now` (seconds since 1970)."""
    day = int(now // DAY) % TIME_SLOTS
    return TIME_ALPHABET[day >> 5] + TIME_ALPHABET[day & 31]


def timestamp_age(stamp: str, now: float) -> int:
    """How many days ago `stamp` was made (0 to 1023, wrapping); raises `SrsError` if it is
    not two base32 letters."""
    if len(stamp) != 2 or any(c not in TIME_ALPHABET for c in stamp.upper()):
        raise SrsError(f"bad timestamp {stamp!r}")
    then = TIME_ALPHABET.index(stamp[0].upper()) << 5 | TIME_ALPHABET.index(stamp[1].upper())
    return (int(now // DAY) - then) % TIME_SLOTS


def _lower_ascii(text: str) -> bytes:
    return text.encode("utf-8").lower()


@dataclass(frozen=True, slots=True)
class SrsCodec:
    """One SRS configuration: the secrets (the first signs, all verify) and the SRS domain."""

    secrets: Sequence[str]
    domain: str
    """The forwarder's SRS domain: the domain of every address `forward` makes."""
    hash_length: int = 4
    """How many base64 letters of the HMAC go into an address."""
    hash_min: int = 4
    """The fewest letters accepted when reversing (for a change of `hash_length`)."""
    max_age: int = 21
    """Days an SRS0 address stays valid."""
    separator: str = "="
    """The character after ``SRS0``/``SRS1`` in addresses made here."""

    def __post_init__(self) -> None:
        if not self.secrets or not all(self.secrets):
            raise ValueError("secrets: at least one secret is needed, and none may be empty")
        if self.separator not in SEPARATORS or len(self.separator) != 1:
            raise ValueError(f"separator: one of {', '.join(SEPARATORS)}")
        if not 1 <= self.hash_min <= self.hash_length <= 27:
            raise ValueError("hash_length: 1 <= hash_min <= hash_length <= 27 (a SHA-1 in base64)")

    def hash(self, *parts: str, secret: str | None = None) -> str:
        """The `hash_length` letters of the HMAC of `parts` (with the first secret)."""
        key = (secret if secret is not None else self.secrets[0]).encode("utf-8")
        digest = hmac.new(key, b"".join(_lower_ascii(p) for p in parts), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[: self.hash_length]

    def check_hash(self, given: str, *parts: str) -> None:
        """Raise `SrsError` unless `given` is the hash of `parts` under some secret."""
        if not self.hash_min <= len(given) <= self.hash_length:
            raise SrsError(f"hash {given!r} has the wrong length")
        wanted = given.lower()
        for secret in self.secrets:
            made = self.hash(*parts, secret=secret)[: len(given)]
            if hmac.compare_digest(made.lower(), wanted):
                return
        raise SrsError("hash does not match")

    def forward(self, address: str, now: float) -> str:
        """The SRS address for the sender `address` (unchanged if it is in `domain`)."""
        local, at, host = address.rpartition("@")
        if not at or not local or not host:
            raise SrsError(f"{address!r} is not an address")
        if host.lower() == self.domain.lower():
            return address
        tag = local[:4].upper()
        if is_srs(local) and tag == "SRS0":
            return self._srs1(host, local[4:])
        if is_srs(local) and tag == "SRS1":
            first, sep, rest = local[5:].partition("=")[2].partition("=")
            if sep and first:
                return self._srs1(first, rest)
        stamp = timestamp(now)
        digest = self.hash(stamp, host, local)
        return f"SRS0{self.separator}{digest}={stamp}={host}={local}@{self.domain}"

    def _srs1(self, first: str, rest: str) -> str:
        digest = self.hash(first, rest)
        return f"SRS1{self.separator}{digest}={first}={rest}@{self.domain}"

    def reverse(self, address: str, now: float) -> str:
        """The address an SRS address stands for; raises `SrsError` when it is not a valid,
        unexpired SRS address made with one of the secrets."""
        local, at, _ = address.rpartition("@")
        if not at or not is_srs(local):
            raise SrsError("not an SRS address")
        if local[3] == "0":
            return self._reverse_srs0(local[5:], now)
        digest, _, rest = local[5:].partition("=")
        first, sep, user = rest.partition("=")
        if not digest or not sep or not first or not user:
            raise SrsError("malformed SRS1 address")
        self.check_hash(digest, first, user)
        return f"SRS0{user}@{first}"

    def _reverse_srs0(self, text: str, now: float) -> str:
        fields = text.split("=", 3)
        if len(fields) != 4 or not all(fields):
            raise SrsError("malformed SRS0 address")
        digest, stamp, host, local = fields
        age = timestamp_age(stamp, now)
        if age > self.max_age:
            raise SrsError(f"expired ({age} days old)")
        self.check_hash(digest, stamp, host, local)
        return f"{local}@{host}"
