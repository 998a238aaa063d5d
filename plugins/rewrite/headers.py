"""Rewriting the addresses in From:, To: and Cc: header values, keeping everything else."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import getaddresses

_BEFORE = r"(?:^|(?<=[<\s,:]))"
_AFTER = r"(?=$|[>\s,;])"


def rewrite_header_value(value: str, rewrite: Callable[[str], str | None]) -> str:
    """`value` with each address that `rewrite` maps replaced in place.

    Display names, comments, quoting and folding stay as they were: only the address text
    itself changes. `rewrite` returns the new address, or None to leave one alone.
    """
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", value)
    for _, address in getaddresses([unfolded]):
        if "@" not in address:
            continue
        new = rewrite(address)
        if new is None or new == address:
            continue
        pattern = re.compile(_BEFORE + re.escape(address) + _AFTER)
        value = pattern.sub(new.replace("\\", "\\\\"), value)
    return value
