"""Ages as the commands take and show them: ``--older-than 2h``, ``12m`` in a listing."""

from __future__ import annotations

import argparse
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_age(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``3d``, ``1w``, a sum like ``1h30m``, or a bare number of
    seconds (``90``), in seconds; an `argparse` type."""
    wanted = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", wanted):
        return float(wanted)
    parts = _AGE.findall(wanted)
    if not parts or "".join(n + u for n, u in parts) != wanted:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an age like 30m, 2h, 3d or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def age(seconds: float) -> str:
    """A duration as a person reads it: ``45s``, ``12m``, ``2h05m``, ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
