"""Make DKIM-Signature headers for a message with dkimpy (synchronous: run it in a thread)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import dkim

import mailgate.plugins.dkim.speedups  # noqa: F401  (faster RSA, cached keys in dkimpy)
from mailgate.plugins.dkim.keys import PrivateKey

_dkimpy_log = logging.getLogger("mailgate.plugins.dkim.dkimpy")


def header_list(present: Iterable[str], sign: Sequence[str], oversign: Iterable[str]) -> list[str]:
    """The ``h=`` list: each header of `sign` as often as the message has it, and the
    over-signed ones once more, so that adding one later breaks the signature (RFC 6376 8.15).

    `present` is the message's header names, in any case; the result is lower case.
    """
    counts = Counter(name.lower() for name in present)
    extra = {name.lower() for name in oversign}
    names: list[str] = []
    for name in dict.fromkeys(n.lower() for n in sign):
        names += [name] * (counts[name] + (1 if name in extra else 0))
    return names


def sign_message(
    data: bytes,
    domain: str,
    keys: Sequence[tuple[str, PrivateKey]],
    headers: Sequence[str],
    canonicalization: tuple[str, str],
) -> list[str]:
    """One DKIM-Signature value per ``(selector, key)``, in order, each over `data` as it is
    (none covers another): the text after ``DKIM-Signature:``, folded with CRLF."""
    signer = dkim.DKIM(data, logger=_dkimpy_log, linesep=b"\r\n")
    canon = (canonicalization[0].encode(), canonicalization[1].encode())
    include = [h.encode() for h in headers]
    values = []
    for selector, key in keys:
        field = signer.sign(
            selector.encode(),
            domain.encode(),
            key.material,
            signature_algorithm=key.algorithm.encode(),
            canonicalize=canon,
            include_headers=include,
        )
        _, _, value = field.decode("ascii").partition(":")
        values.append(value.strip(" ").removesuffix("\r\n"))
    return values
