"""Make an ARC set (RFC 8617 5.1) with dkimpy (synchronous: run it in a thread).

dkimpy's ``ARC.sign`` reads the sealer's results from an Authentication-Results header of the
message with the sealer's authserv-id, and takes the chain validation status (``cv=``) from its
``arc=`` result. So the plugin gives it the message with one such header on top, written from
mailgate's results (``arc=`` is the plugin's own verification); that header is only input: it
is not in what dkimpy signs (Authentication-Results is never in an ARC-Message-Signature, and
the ARC-Seal covers ARC header fields only) and it is not added to the message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dkim

from mailgate.plugins.dkim.keys import PrivateKey

_dkimpy_log = logging.getLogger("mailgate.plugins.arc.dkimpy")


class SealRefused(Exception):
    """dkimpy made no set: the chain cannot be continued (why is the message)."""


def seal_message(
    data: bytes,
    *,
    authserv_id: str,
    resinfo: str,
    domain: str,
    selector: str,
    key: PrivateKey,
    headers: Sequence[str],
    timestamp: int | None = None,
) -> list[tuple[str, str]]:
    """The ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results of the next instance,
    as ``(name, value)`` in that order (top to bottom), values folded with CRLF."""
    head = f"Authentication-Results: {authserv_id}; {resinfo}\r\n".encode()
    try:
        signer = dkim.ARC(head + data, logger=_dkimpy_log, linesep=b"\r\n")
        signer.should_not_sign.discard(b"dkim-signature")  # RFC 8617 recommends covering them
        present = {name.lower() for name, _ in signer.headers}
        include = [h.lower().encode() for h in headers if h.lower().encode() in present]
        made = signer.sign(
            selector.encode(),
            domain.encode(),
            key.material,
            authserv_id.encode(),
            include_headers=include,
            timestamp=timestamp,
        )
    except dkim.DKIMException as exc:
        raise SealRefused(" ".join(str(exc).split()) or type(exc).__name__) from None
    except Exception as exc:  # dkimpy's parsers let others through on hostile ARC fields
        raise SealRefused(f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if not made:
        raise SealRefused("the chain was not continued (no arc= result for an existing chain)")
    fields = []
    for line in made:
        name, _, value = line.decode("ascii").partition(":")
        fields.append((name, value.strip(" ").removesuffix("\r\n")))
    return fields
