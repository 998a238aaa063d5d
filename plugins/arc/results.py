"""The authentication results mailgate puts in its ARC-Authentication-Results.

A small stand-in until the core's Authentication-Results builder is merged: it writes the
``resinfo`` list of RFC 8601 from the `PluginResult` entries that carry ``auth_method`` (with
``auth_properties``) or a list of ``auth_results`` (as spf, dkim, dmarc and arc record them),
and leaves out, with a warning, what cannot be written as RFC 8601 keywords.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import structlog

from mailgate.session import PluginResult

log = structlog.get_logger("mailgate.plugins.arc")

_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~@-]+\Z")


def resinfo_list(results: Mapping[str, PluginResult]) -> str:
    """``spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com ...``, in the order
    the plugins recorded them; ``none`` when no result can be written (RFC 8601 2.2)."""
    written = [text for name, result in results.items() for text in _resinfos(name, result)]
    return "; ".join(written) if written else "none"


def _resinfos(plugin: str, result: PluginResult) -> Iterator[str]:
    details = result.details
    entries = details.get("auth_results")
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, Mapping):
                yield from _written(
                    plugin,
                    str(entry.get("method", "")),
                    str(entry.get("result", "")),
                    str(entry.get("reason") or ""),
                    entry.get("properties"),
                )
    elif isinstance(details.get("auth_method"), str):
        yield from _written(
            plugin,
            details["auth_method"],
            result.result,
            result.reason,
            details.get("auth_properties"),
        )


def _written(plugin: str, method: str, result: str, reason: str, properties: Any) -> Iterator[str]:
    if not _KEYWORD.match(method) or not _KEYWORD.match(result):
        log.warning("result left out of the ARC seal", plugin=plugin, method=method)
        return
    parts = [f"{method}={result}"]
    if reason:
        parts.append(f"reason={_quoted(reason)}")
    for key, value in (properties or {}).items():
        ptype, dot, prop = str(key).partition(".")
        if not dot or not _KEYWORD.match(ptype) or not _KEYWORD.match(prop):
            log.warning("property left out of the ARC seal", plugin=plugin, property=key)
            continue
        text = str(value)
        parts.append(f"{key}={text if _TOKEN.match(text) else _quoted(text)}")
    yield " ".join(parts)


def _quoted(text: str) -> str:
    clean = "".join(c if c.isprintable() else " " for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
