"""What goes into the header: the results the authentication checks recorded.

- ``iprev``: the session's FCrDNS result (`mailgate.iprev`), with ``policy.iprev``;
- ``auth``: the SMTP AUTH login of the session, with ``smtp.auth`` (unless a plugin
  recorded an ``auth`` result itself);
- every `PluginResult` whose details carry ``auth_method`` (and ``auth_properties``, a dict
  of ``ptype.property`` to value): ``method=result``, its reason, its properties;
- a plugin with several results (dkim: one per signature) puts a list under
  ``details["auth_results"]``, each a dict with ``method``, ``result`` and optionally
  ``reason`` and ``properties``.

A result that cannot be written (a method or property name that is not an RFC 8601 keyword)
is left out with a warning, not written half-right.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

from mailgate.authentication_results.header import AuthResult
from mailgate.iprev import IPREV_NOTE, IprevResult
from mailgate.logging import get_logger
from mailgate.session import PluginResult, Session, Transaction

log = get_logger("mailgate.authentication_results")


def results_of(session: Session, transaction: Transaction) -> list[AuthResult]:
    """The results to write, connection first (iprev, auth), then the plugins in the order
    they recorded theirs."""
    found: list[AuthResult] = []
    iprev = session.notes.get(IPREV_NOTE)
    if isinstance(iprev, IprevResult):
        found.append(_iprev(iprev))
    from_plugins: list[AuthResult] = []
    for plugin, result in transaction.results.items():
        _add(from_plugins, plugin, result)
    if session.auth_login and not any(r.method.lower() == "auth" for r in from_plugins):
        found.append(AuthResult("auth", "pass", properties={"smtp.auth": session.auth_login}))
    found += from_plugins
    return found


def _iprev(iprev: IprevResult) -> AuthResult:
    reason = "" if iprev.result == "pass" else iprev.reason
    return AuthResult("iprev", iprev.result, reason, {"policy.iprev": iprev.ip}, iprev.name)


def _add(found: list[AuthResult], plugin: str, result: PluginResult) -> None:
    """Append the results `plugin` recorded in `result` that can be written."""
    details = result.details
    many = details.get("auth_results")
    if isinstance(many, list):
        for entry in many:
            made = _from_dict(plugin, entry) if _is_mapping(entry) else None
            if made is not None:
                found.append(made)
    elif isinstance(details.get("auth_method"), str):
        made = _checked(
            plugin,
            AuthResult(
                details["auth_method"],
                result.result,
                result.reason,
                _properties(details.get("auth_properties")),
            ),
        )
        if made is not None:
            found.append(made)


def _from_dict(plugin: str, entry: Mapping[str, Any]) -> AuthResult | None:
    return _checked(
        plugin,
        AuthResult(
            str(entry.get("method", "")),
            str(entry.get("result", "")),
            str(entry.get("reason") or ""),
            _properties(entry.get("properties")),
        ),
    )


def _properties(value: object) -> dict[str, str]:
    if not _is_mapping(value):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    # A plain dict is what plugins record: skip the slower abstract-class check for it.
    return type(value) is dict or isinstance(value, Mapping)


def _checked(plugin: str, result: AuthResult) -> AuthResult | None:
    problem = result.problem()
    if problem:
        log.warning("authentication result left out", plugin=plugin, problem=problem)
        return None
    return result
