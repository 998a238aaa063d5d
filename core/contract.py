"""Check a plugin class against the plugin contract before anything is built from it.

The contract is `mailgate.hookspecs`: its hooks, and `mailgate.hookspecs.PluginClass` for the
class attributes. pluggy validates hook names and arguments only when an instance is
registered, and knows nothing of what mailgate's own dispatcher (`mailgate.pipeline`) does not
run; these checks run on the class, when the configuration is loaded, so ``check-config``,
``try``, ``serve`` and a SIGHUP reload refuse the same plugins with the same words.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

from mailgate import hookspecs
from mailgate.pipeline import declared_reads
from mailgate.plugin import PROJECT

_IMPL_MARK = f"{PROJECT}_impl"
_SPEC_MARK = f"{PROJECT}_spec"

UNSUPPORTED_OPTIONS = {
    "wrapper": "mailgate calls each hook once and awaits its answer",
    "hookwrapper": "mailgate calls each hook once and awaits its answer",
    "tryfirst": "plugins run in conf.d order",
    "trylast": "plugins run in conf.d order",
}
"""``@hookimpl`` options mailgate's dispatcher does not honour, with why."""


class ContractError(ValueError):
    """A plugin class that breaks the contract: `where` (``hook on_rcpt``, ``Settings``, or empty
    when `reason` names it) and `reason`."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}" if where else reason)


def hook_arguments() -> dict[str, tuple[str, ...]]:
    """Every hook in `mailgate.hookspecs`, in SMTP order, with the arguments it offers."""
    return {
        name: tuple(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if getattr(fn, _SPEC_MARK, None) is not None
    }


def check_plugin_class(cls: type) -> None:
    """Raise `ContractError` for the first way `cls` breaks `mailgate.hookspecs.PluginClass`."""
    _check_settings(cls)
    try:
        declared_reads(cls)
    except ValueError as exc:
        raise ContractError("", str(exc)) from None  # "reads must be ..."
    concurrent = getattr(cls, "concurrent", False)
    if not isinstance(concurrent, bool):
        raise ContractError("concurrent", f"must be True or False, not {concurrent!r}")
    answers = getattr(cls, "answers", None)
    if answers is not None and not callable(answers):
        raise ContractError("answers", f"must be a method answers(hook, ingress), not {answers!r}")
    _check_hooks(cls)


def _check_settings(cls: type) -> None:
    settings = getattr(cls, "Settings", None)
    if settings is not None and not (
        isinstance(settings, type) and dataclasses.is_dataclass(settings)
    ):
        raise ContractError("Settings", f"must be a dataclass (or None), not {settings!r}")
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # a class built in C: nothing to read
        return
    positional = (object(),) if settings is not None else ()
    keywords = {"dns": None} if "dns" in signature.parameters else {}
    try:
        signature.bind(*positional, **keywords)
    except TypeError as exc:
        given = "its Settings as its one argument" if positional else "no argument (no Settings)"
        raise ContractError("__init__", f"cannot be called with {given}: {exc}") from None


def _check_hooks(cls: type) -> None:
    hooks = hook_arguments()
    for attr in dir(cls):
        try:
            method = getattr(cls, attr)
        except AttributeError:
            continue
        if not inspect.isroutine(method):
            continue
        options = getattr(method, _IMPL_MARK, None)
        if not isinstance(options, dict):
            if attr in hooks:
                reason = "not marked @hookimpl, so it would never be called"
                raise ContractError(f"hook {attr}", reason)
            continue
        hook = options.get("specname") or attr
        for option, why in UNSUPPORTED_OPTIONS.items():
            if options.get(option):
                raise ContractError(
                    f"hook {hook}", f"hookimpl option {option} is not supported ({why})"
                )
        if hook not in hooks:
            if options.get("optionalhook"):
                continue  # declared as "if this mailgate has it": it is never called
            raise ContractError(f"hook {hook}", f"no such hook ({_suggest(hook, hooks)})")
        _check_arguments(cls, attr, method, f"hook {hook}", hooks[hook])


def _suggest(hook: str, hooks: dict[str, tuple[str, ...]]) -> str:
    close = difflib.get_close_matches(hook, hooks, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return "the hooks are " + ", ".join(hooks)


def _check_arguments(
    cls: type, attr: str, method: Any, where: str, offered: tuple[str, ...]
) -> None:
    parameters = list(inspect.signature(method).parameters.values())
    bound = isinstance(inspect.getattr_static(cls, attr), staticmethod | classmethod)
    if not bound and inspect.isfunction(method):
        parameters = parameters[1:]  # self
    offers = f"the hook offers {', '.join(offered)}"
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            reason = f"argument '{star}{p.name}' is not supported: name the ones you use ({offers})"
            raise ContractError(where, reason)
        if p.name not in offered:
            raise ContractError(where, f"unknown argument '{p.name}' ({offers})")
        if p.kind is p.POSITIONAL_ONLY:
            reason = f"argument '{p.name}' is positional-only: mailgate passes arguments by name"
            raise ContractError(where, reason)
        if p.kind is p.KEYWORD_ONLY:
            reason = f"argument '{p.name}' is keyword-only, so it would never be given"
            raise ContractError(where, reason)
        if p.default is not p.empty:
            reason = f"argument '{p.name}' has a default value, so it would never be given"
            raise ContractError(where, reason)
