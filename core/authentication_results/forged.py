"""Which incoming Authentication-Results headers must go (RFC 8601 section 5).

A header that claims our authserv-id but was not written by us in this pass is a forgery (or
a stale copy of one of ours): a reader downstream would trust it as our word. It is removed
before ours goes on, whatever its spacing, case or comments. ARC-Authentication-Results
claiming our id are removed too, unless they belong to an ARC chain that validated (removing
one would break the chain's seal; one of ours in a valid chain is our own earlier hop).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from mailgate.authentication_results.header import ARC_HEADER, HEADER
from mailgate.authentication_results.parse import claimed_id
from mailgate.message import Header

_AR = HEADER.lower()
_ARC_AR = ARC_HEADER.lower()


def forged_headers(
    headers: Sequence[Header],
    authserv_id: str,
    *,
    remove_all: bool = False,
    arc_chain_valid: bool = False,
    added: Collection[str] = (),
) -> list[tuple[str, int]]:
    """The headers of `headers` to delete, as ``(name, occurrence)`` (1-based, as
    `Transaction.delete_header` takes them), the last first, so deleting them in this order
    leaves the occurrence numbers of the others valid.

    `remove_all` removes every Authentication-Results, whoever it claims to be;
    `arc_chain_valid` keeps the ARC-Authentication-Results; headers whose value is in `added`
    were written by a plugin in this pass and stay.
    """
    ours = authserv_id.lower()
    seen: dict[str, int] = {}
    doomed: list[tuple[str, int]] = []
    for header in headers:
        stored = header.name.lower()
        seen[stored] = seen.get(stored, 0) + 1
        kind = stored.strip()
        if kind not in (_AR, _ARC_AR) or header.value in added:
            continue
        if kind == _AR:
            goes = remove_all or claimed_id(header.raw_value) == ours
        else:
            goes = not arc_chain_valid and claimed_id(header.raw_value, arc=True) == ours
        if goes:
            doomed.append((header.name, seen[stored]))
    return sorted(doomed, key=lambda pair: -pair[1])
