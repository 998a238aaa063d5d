"""Password hashes as directories store them, checked with the standard library only.

Schemes, written with Dovecot's ``{SCHEME}`` prefix (the prefix is optional for the crypt
forms, which describe themselves):

- ``{SHA512-CRYPT}$6$...`` and ``{SHA256-CRYPT}$5$...``: SHA-crypt (Ulrich Drepper's
  specification, what ``doveadm pw -s SHA512-CRYPT``, ``mkpasswd -m sha-512`` and
  ``openssl passwd -6`` make), with ``rounds=N$`` when given;
- ``{SSHA512}``, ``{SSHA256}``, ``{SSHA}``: salted SHA-2/SHA-1, base64 of digest + salt (what
  ``slappasswd`` makes);
- ``{SHA512}``, ``{SHA256}``, ``{SHA}``: unsalted, base64 (legacy; accepted for migration).

bcrypt and argon2 need libraries the standard library does not have, and plain text is not a
hash: such a value (or any other) is `UnknownScheme`, which the caller reports as a failure
of the directory, never as a wrong password. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHA_CRYPT = re.compile(r"\$([56])\$(?:rounds=(\d+)\$)?([^$]{0,16})\$([./0-9A-Za-z]+)\Z")
_PREFIX = re.compile(r"\{([A-Z0-9-]+)\}")
_DIGESTS = {"SHA512": "sha512", "SHA256": "sha256", "SHA": "sha1"}
ROUNDS_DEFAULT, ROUNDS_MIN, ROUNDS_MAX = 5000, 1000, 999_999_999
MAX_ROUNDS_ACCEPTED = 1_000_000
"""A stored hash with more rounds is refused: one check must not take seconds of CPU."""


class UnknownScheme(ValueError):
    """The stored value is not a hash this module can check."""


def verify(stored: str, secret: str) -> bool:
    """True if `secret` matches `stored`; raises `UnknownScheme` for an unusable value."""
    scheme, value = _split(stored)
    password = secret.encode("utf-8")
    if scheme in ("SHA512-CRYPT", "SHA256-CRYPT", ""):
        match = _SHA_CRYPT.match(value)
        if match is None or (scheme and (scheme == "SHA512-CRYPT") != (match[1] == "6")):
            raise UnknownScheme("not a SHA-crypt hash ($5$ or $6$)")
        rounds = int(match[2]) if match[2] is not None else None
        if rounds is not None and rounds > MAX_ROUNDS_ACCEPTED:
            raise UnknownScheme(f"more than {MAX_ROUNDS_ACCEPTED} rounds")
        made = sha_crypt(
            password, match[3].encode(), rounds, "sha512" if match[1] == "6" else "sha256"
        )
        return hmac.compare_digest(made.encode(), value.encode())
    salted = scheme.startswith("S") and scheme[1:] in _DIGESTS
    name = _DIGESTS.get(scheme[1:] if salted else scheme)
    if name is None:
        raise UnknownScheme(f"scheme {{{scheme}}} is not supported")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise UnknownScheme("bad base64") from None
    size = hashlib.new(name).digest_size
    if len(raw) < size or (not salted and len(raw) != size):
        raise UnknownScheme("hash of the wrong length")
    digest, salt = raw[:size], raw[size:]
    return hmac.compare_digest(hashlib.new(name, password + salt).digest(), digest)


def _split(stored: str) -> tuple[str, str]:
    match = _PREFIX.match(stored)
    if match is None:
        return "", stored
    return match[1].upper(), stored[match.end() :]


def sha_crypt(password: bytes, salt: bytes, rounds: int | None, name: str) -> str:
    """The SHA-crypt string (``$6$...`` for sha512, ``$5$...`` for sha256) of `password`."""
    salt = salt[:16]
    count = ROUNDS_DEFAULT if rounds is None else min(max(rounds, ROUNDS_MIN), ROUNDS_MAX)
    size = hashlib.new(name).digest_size
    b = hashlib.new(name, password + salt + password).digest()
    a = hashlib.new(name, password + salt)
    length = len(password)
    a.update(b * (length // size) + b[: length % size])
    i = length
    while i:
        a.update(b if i & 1 else password)
        i >>= 1
    c = a.digest()
    dp = hashlib.new(name, password * length).digest()
    p = (dp * (length // size + 1))[:length]
    ds = hashlib.new(name, salt * (16 + c[0])).digest()
    s = ds[: len(salt)]
    for r in range(count):
        h = hashlib.new(name, p if r & 1 else c)
        if r % 3:
            h.update(s)
        if r % 7:
            h.update(p)
        h.update(c if r & 1 else p)
        c = h.digest()
    ident = "6" if size == 64 else "5"
    head = f"${ident}$" + (f"rounds={count}$" if rounds is not None else "")
    return head + salt.decode("ascii", "replace") + "$" + _encode(c)


def _encode(digest: bytes) -> str:
    out = []
    groups = len(digest) // 3
    third = groups
    for i in range(groups):
        trio = (i, i + third, i + 2 * third)
        rot = i % 3 if len(digest) == 64 else -i % 3
        a, b, c = trio[rot:] + trio[:rot]
        out.append(_b64_24(digest[a], digest[b], digest[c], 4))
    if len(digest) == 64:
        out.append(_b64_24(0, 0, digest[63], 2))
    else:
        out.append(_b64_24(0, digest[31], digest[30], 3))
    return "".join(out)


def _b64_24(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    chars = []
    for _ in range(n):
        chars.append(_CRYPT64[w & 0x3F])
        w >>= 6
    return "".join(chars)
