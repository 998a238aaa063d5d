"""`load_settings`: turn a TOML table into a settings dataclass, checking every key.

The field type hints are the schema. Supported: ``str``, ``int``, ``float`` (an int is
accepted), ``bool``, ``pathlib.Path``, ``Literal[...]``, enums (by value), ``list[T]``,
``tuple[T, ...]``, ``dict[str, T]``, nested dataclasses (a sub-table), ``X | None`` and other
unions, ``Dynamic[T]``, and ``Annotated[T, Check(...)]`` for an extra test such as `HostPort`.
A field without a default is required; a key without a field is an error with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import pathlib
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from mailgate.config.dynamic import Dynamic
from mailgate.config.errors import MISSING, ConfigError
from mailgate.expressions import Expression, ExpressionError, check_networks
from mailgate.sockaddr import is_host_port

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Check:
    """An extra test on a value, used as ``Annotated[str, Check(test, "what is expected")]``.

    `test` returns True for a good value.
    """

    test: Callable[[Any], bool]
    expected: str


HostPort = Annotated[str, Check(is_host_port, '"host:port"')]
"""A ``host:port`` string (IPv6 hosts in brackets): listener and downstream addresses."""

Networks = Annotated[
    list[str], Check(lambda v: not check_networks(v), 'a list of networks such as "192.0.2.0/24"')
]
"""A list of CIDR networks (``ip_in`` accepts the same)."""


def load_settings(
    cls: type[S],
    table: Mapping[str, Any],
    *,
    source: str,
    prefix: str = "",
    skip: frozenset[str] = frozenset(),
) -> S:
    """Build the dataclass `cls` from `table`, or raise `ConfigError`.

    `source` names the file in errors; `prefix` is the dotted path of the table in it
    (``"relay"``) so errors name ``relay.address``; keys in `skip` are ignored (the reserved
    keys of a plugin file).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        if name in skip:
            continue
        path = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            raise ConfigError.unknown_key(source, path, name, fields)
        kwargs[name] = convert(hints[name], value, source=source, key=path)
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in kwargs and no_default:
            path = f"{prefix}.{name}" if prefix else name
            raise ConfigError(source, path, MISSING, describe(hints[name]))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise _refused(exc, table, source, prefix) from None


def fixed_dynamics(settings: Any) -> None:
    """Wrap the plain values given to `Dynamic` fields of the dataclass `settings` in
    `Dynamic.fixed`, so code (and tests) may build settings with ``action="tag"``; call it first
    in ``__post_init__``. What `load_settings` converted is left as it is."""
    cls: Any = type(settings)
    hints: dict[str, Any] = _hints(cls)
    for f in dataclasses.fields(settings):
        hint: Any = hints[f.name]
        if get_origin(hint) is Dynamic:
            value = getattr(settings, f.name)
            if not isinstance(value, Dynamic):
                setattr(settings, f.name, Dynamic.fixed(value))


def _refused(exc: Exception, table: Mapping[str, Any], source: str, prefix: str) -> ConfigError:
    """The settings class's own check (``__post_init__``) refused: name the key it complains of."""
    message = str(exc)
    for name, value in table.items():
        if re.match(rf"{re.escape(name)}\b", message):
            key = f"{prefix}.{name}" if prefix else name
            # "limit: must be positive" names the key; the reason is what follows it.
            reason = re.sub(rf"^{re.escape(name)}\s*:\s*", "", message) or message
            return ConfigError(source, key, value, reason)
    return ConfigError(source, prefix or "(file)", dict(table), message)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def describe(tp: Any) -> str:
    """What a value of type `tp` looks like, for the `expected` part of an error."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        checks = [m for m in args[1:] if isinstance(m, Check)]
        return checks[0].expected if checks else describe(args[0])
    if tp is Any or tp is object:
        return "any value"
    if _is_union(tp):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is Dynamic:
        rules = '{ if = "...", then = ... } ending in { else = ... }'
        return f"{describe(args[0])}, or a list of {rules}"
    if origin in (list, tuple, set, frozenset):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict:
        return f"a table of {_plural(args[1])}" if args else "a table"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(json.dumps(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a table"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    pathlib.Path: "a path (string)",
    Expression: "a CEL expression (string)",
}


def _plural(tp: Any) -> str:
    text = describe(tp)
    for article in ("a ", "an "):
        if text.startswith(article) and " or " not in text:
            return text[len(article) :] + "s"
    return text


def convert(tp: Any, value: Any, *, source: str, key: str) -> Any:
    """Check `value` against the type `tp` and convert it, or raise `ConfigError`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        try:
            result = convert(args[0], value, source=source, key=key)
        except ConfigError as exc:
            if exc.key != key:
                raise
            raise ConfigError(source, key, value, describe(tp)) from None
        for check in (m for m in args[1:] if isinstance(m, Check)):
            if not check.test(result):
                raise ConfigError(source, key, value, check.expected)
        return result
    if tp is Any or tp is object:
        return value
    if _is_union(tp):
        return _convert_union(tp, value, source=source, key=key)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(source, key, value, describe(tp))
    if origin is Dynamic:
        return _convert_dynamic(args[0], value, source=source, key=key)
    if origin in (list, tuple, set, frozenset):
        return _convert_list(tp, origin, args, value, source=source, key=key)
    if origin is dict:
        return _convert_dict(tp, args, value, source=source, key=key)
    if isinstance(tp, type):
        return _convert_plain(tp, value, source=source, key=key)
    raise TypeError(f"{key}: unsupported settings type {tp!r}")


def _convert_plain(tp: type, value: Any, *, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, value, "a table")
        return load_settings(tp, value, source=source, prefix=key)
    if issubclass(tp, enum.Enum):
        for member in tp:
            if member.value == value or (isinstance(value, str) and member.name.lower() == value):
                return member
        raise ConfigError(source, key, value, describe(tp))
    if tp is Expression:
        if not isinstance(value, str):
            raise ConfigError(source, key, value, describe(tp))
        return _expression(value, source=source, key=key)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is pathlib.Path:
        ok = isinstance(value, str)
        value = pathlib.Path(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(source, key, value, describe(tp))
    return value


def _convert_union(tp: Any, value: Any, *, source: str, key: str) -> Any:
    arms = [a for a in get_args(tp) if a is not type(None)]
    errors = []
    for arm in arms:
        try:
            return convert(arm, value, source=source, key=key)
        except ConfigError as exc:
            errors.append(exc)
    if len(arms) == 1:
        raise errors[0]
    raise ConfigError(source, key, value, describe(tp))


def _convert_list(
    tp: Any, origin: Any, args: tuple[Any, ...], value: Any, *, source: str, key: str
) -> Any:
    if not isinstance(value, list):
        raise ConfigError(source, key, value, describe(tp))
    item_type = args[0] if args else Any
    items = [convert(item_type, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
    return items if origin is list else origin(items)


def _convert_dict(tp: Any, args: tuple[Any, ...], value: Any, *, source: str, key: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(source, key, value, describe(tp))
    item_type = args[1] if args else Any
    return {k: convert(item_type, v, source=source, key=f"{key}.{k}") for k, v in value.items()}


def _expression(text: str, *, source: str, key: str, boolean: bool = True) -> Expression:
    try:
        return Expression(text, boolean=boolean)
    except ExpressionError as exc:
        raise ConfigError(source, key, text, f"a valid CEL expression: {exc}") from None


def _is_rule_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(r, dict) and ("if" in r or "else" in r) for r in value)
    )


def _convert_dynamic(item_type: Any, value: Any, *, source: str, key: str) -> Dynamic[Any]:
    if not _is_rule_list(value):
        return Dynamic.fixed(convert(item_type, value, source=source, key=key))
    rules: list[tuple[Expression, Any]] = []
    last = len(value) - 1
    for i, rule in enumerate(value):
        where = f"{key}[{i}]"
        if "else" in rule:
            if i != last or set(rule) != {"else"}:
                raise ConfigError(source, where, rule, "{ else = ... } alone, as the last rule")
            default = convert(item_type, rule["else"], source=source, key=f"{where}.else")
            return Dynamic(rules, default)
        if set(rule) != {"if", "then"}:
            raise ConfigError(source, where, rule, '{ if = "<CEL>", then = ... }')
        condition = rule["if"]
        if not isinstance(condition, str):
            raise ConfigError(source, f"{where}.if", condition, "a CEL expression (string)")
        expression = _expression(condition, source=source, key=f"{where}.if")
        rules.append(
            (expression, convert(item_type, rule["then"], source=source, key=f"{where}.then"))
        )
    raise ConfigError(source, f"{key}[{last + 1}]", MISSING, "a final { else = ... }")
