"""CEL expressions over a session and transaction: `when = "..."` and `{ if = "..." }` settings.

An expression is compiled once, at load, and checked there: every variable it names must be one
of `VARIABLES`, and it must evaluate to a bool on sample sessions. At run time it sees only the
variables it names, built from the live `Session` and `Transaction`:

=================  =========================================================================
``client``         ``{ip, port, name}``: the connecting client (``name``: reverse DNS, or "")
``helo``           the HELO/EHLO name
``listener``       the name of the listener the client came in on
``tls``            true when the session is encrypted
``auth``           ``{login}``: the authenticated login ("" when not authenticated)
``authenticated``  true when the client authenticated
``sender``         ``{address, local, domain}``: the envelope sender ("" parts for ``<>``)
``rcpt``           ``{address, local, domain}``: the recipient being checked at RCPT;
                   elsewhere the last accepted recipient
``rcpts``          the accepted recipients, a list of ``{address, local, domain}``
``size``           the message size: the SIZE parameter before the data, the real size after
                   (but still the SIZE parameter, or 0, on the milter listener when no plugin
                   reads the content: see ``reads`` in `mailgate.hookspecs`)
``header_from``    ``{address, local, domain}``: the one address of the From: header at the end
                   of data ("" parts before, and when From: is missing, repeated or has several
                   addresses)
``results``        what earlier plugins recorded: plugin name -> result word
                   (``"arc" in results && results.arc == "pass"``)
=================  =========================================================================

Helpers: ``ip_in(ip, ["192.0.2.0/24", "2001:db8::/32"])`` (CIDR membership) and
``re_match(pattern, value)`` (Python regular expression search, compiled once per pattern).
"""

from __future__ import annotations

import contextvars
import email.utils
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

import cel

from mailgate.logging import get_logger
from mailgate.session import Address, Session, Transaction
from mailgate.syntax import ascii_number

log = get_logger("mailgate.expressions")

current_recipient: contextvars.ContextVar[Address | None] = contextvars.ContextVar(
    "current_recipient", default=None
)
"""The recipient being checked at RCPT (set by the dispatcher around ``on_rcpt``): ``rcpt``."""

VARIABLES = frozenset(
    {
        "client",
        "helo",
        "listener",
        "tls",
        "auth",
        "authenticated",
        "sender",
        "rcpt",
        "rcpts",
        "size",
        "header_from",
        "results",
    }
)
"""The names an expression may use."""

_IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ExpressionError(ValueError):
    """An expression that does not compile, names an unknown variable or is not a bool.

    `position` is ``"line:column"`` when the CEL compiler gave one, else "".
    """

    def __init__(self, source: str, reason: str, position: str = "") -> None:
        self.source = source
        self.reason = reason
        self.position = position
        where = f" at {position}" if position else ""
        super().__init__(f"{reason}{where}")


# -- helpers ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _networks(cidrs: tuple[str, ...]) -> tuple[_IpNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@functools.lru_cache(maxsize=4096)
def _address(ip: str) -> _IpAddress | None:
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def ip_in(ip: str, cidrs: str | Iterable[str]) -> bool:
    """True if `ip` is inside one of `cidrs` (a CIDR string or a list of them).

    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) count as their IPv4 address. An address
    that does not parse is in no network.
    """
    addr = _address(ip)
    if addr is None:
        return False
    nets = _networks((cidrs,) if isinstance(cidrs, str) else tuple(cidrs))
    return any(addr.version == net.version and addr in net for net in nets)


_regexes: dict[str, re.Pattern[str]] = {}


def re_match(pattern: str, value: str) -> bool:
    """True if the Python regular expression `pattern` matches somewhere in `value`.

    Patterns are compiled once and kept; use ``(?i)`` for a case-insensitive match.
    """
    rx = _regexes.get(pattern)
    if rx is None:
        rx = _regexes[pattern] = re.compile(pattern)
    return rx.search(value) is not None


FUNCTIONS: dict[str, Callable[..., Any]] = {"ip_in": ip_in, "re_match": re_match}
"""The helper functions every expression can call."""


def check_networks(cidrs: Iterable[str]) -> list[str]:
    """The entries of `cidrs` that are not valid networks (for settings validation)."""
    bad = []
    for c in cidrs:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            bad.append(c)
    return bad


# -- facts -----------------------------------------------------------------------------------


def _addr_map(address: Address | None) -> dict[str, str]:
    if address is None:
        return {"address": "", "local": "", "domain": ""}
    a = address.address
    return {"address": a, "local": address.local_part if a else "", "domain": address.domain}


def _size(tx: Transaction | None) -> int:
    if tx is None:
        return 0
    if tx.message is not None and not tx.message.withheld:
        return tx.message.size
    for param in tx.sender.params:
        key, _, value = param.partition("=")
        if key.upper() == "SIZE" and (size := ascii_number(value)) is not None:
            return size
    return 0


def _rcpt_address(tx: Transaction | None) -> Address | None:
    current = current_recipient.get()
    if current is None and tx is not None and tx.recipients:
        current = tx.recipients[-1]
    return current


def _sender(tx: Transaction | None) -> Address | None:
    return tx.sender if tx is not None else None


def _rcpts(tx: Transaction | None) -> list[Address]:
    return tx.recipients if tx is not None else []


def _header_from(tx: Transaction | None) -> Address | None:
    """The From: header's one address, or None (no message yet, no usable single address)."""
    if tx is None or tx.message is None:
        return None
    values = tx.message.get_all("From")
    if len(values) != 1:
        return None
    addresses = [a for _, a in email.utils.getaddresses(values) if a]
    return Address(addresses[0]) if len(addresses) == 1 else None


def _results(tx: Transaction | None) -> dict[str, str]:
    return {} if tx is None else {name: r.result for name, r in tx.results.items()}


def _key(address: Address | None) -> str | None:
    return None if address is None else address.address


_Fact = Callable[[Session, Transaction | None], Any]

# Each variable has a cheap key and a builder: converting a map into CEL costs ~10 us, so the
# value is rebuilt only when its key changed since the last evaluation of that expression.
_FACTS: dict[str, tuple[_Fact, _Fact]] = {
    "client": (
        lambda s, t: (s.client_ip, s.client_port, s.client_name),
        lambda s, t: {"ip": s.client_ip, "port": s.client_port, "name": s.client_name},
    ),
    "helo": (lambda s, t: s.helo, lambda s, t: s.helo),
    "listener": (lambda s, t: s.listener, lambda s, t: s.listener),
    "tls": (lambda s, t: s.tls, lambda s, t: s.tls),
    "auth": (lambda s, t: s.auth_login, lambda s, t: {"login": s.auth_login}),
    "authenticated": (lambda s, t: s.auth_login, lambda s, t: bool(s.auth_login)),
    "sender": (lambda s, t: _key(_sender(t)), lambda s, t: _addr_map(_sender(t))),
    "rcpt": (lambda s, t: _key(_rcpt_address(t)), lambda s, t: _addr_map(_rcpt_address(t))),
    "rcpts": (
        lambda s, t: tuple(r.address for r in _rcpts(t)),
        lambda s, t: [_addr_map(r) for r in _rcpts(t)],
    ),
    "size": (lambda s, t: _size(t), lambda s, t: _size(t)),
    "header_from": (
        lambda s, t: _key(_header_from(t)),
        lambda s, t: _addr_map(_header_from(t)),
    ),
    "results": (lambda s, t: tuple(_results(t).items()), lambda s, t: _results(t)),
}


def _samples() -> list[tuple[Session, Transaction | None]]:
    """Sessions an expression is tried on at load: it must give a bool on each."""
    bare = Session(client_ip="192.0.2.1")
    full = Session(
        client_ip="2001:db8::1",
        client_port=40000,
        client_name="mx.example.net",
        helo="mx.example.net",
        tls=True,
        auth_login="user@example.net",
    )
    tx = Transaction(
        Address("a@example.net", ["SIZE=1000"]),
        [Address("b@example.org"), Address("c@example.com")],
    )
    return [(bare, None), (bare, Transaction(Address(""))), (full, tx)]


# -- expressions -----------------------------------------------------------------------------

_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


class Expression:
    """A compiled, checked CEL expression; call it with ``(session, transaction)``.

    `Expression("...")` raises `ExpressionError` for a syntax error, an unknown variable or a
    non-bool result (unless ``boolean=False``). Calling it never raises: an evaluation error
    is logged and counts as false.
    """

    __slots__ = ("_context", "_facts", "_keys", "_program", "source")

    def __init__(self, source: str, *, boolean: bool = True) -> None:
        self.source = source
        try:
            self._program = cel.compile(source)
        except ValueError as exc:
            raise _compile_error(source, str(exc)) from None
        bound = set(_BOUND.findall(source))
        names = [n for n in self._program.variables() if n not in bound]
        unknown = sorted(n for n in names if n not in VARIABLES and n not in FUNCTIONS)
        if unknown:
            known = ", ".join(sorted(VARIABLES))
            raise ExpressionError(source, f"unknown variable {unknown[0]!r} (known: {known})")
        self._facts = [(n, *_FACTS[n]) for n in names if n in _FACTS]
        self._keys: dict[str, Any] = {}
        self._context = cel.Context(None, FUNCTIONS)
        for session, tx in _samples():
            try:
                result = self._run(session, tx)
            except Exception as exc:
                raise ExpressionError(source, _sample_error(exc)) from None
            if boolean and not isinstance(result, bool):
                kind = type(result).__name__
                raise ExpressionError(source, f"evaluates to {kind}, expected a bool")

    def _run(self, session: Session, tx: Transaction | None) -> Any:
        ctx = self._context
        keys = self._keys
        for name, key_of, build in self._facts:
            key = key_of(session, tx)
            if name not in keys or keys[name] != key:
                ctx.add_variable(name, build(session, tx))
                keys[name] = key
        return self._program.execute(ctx)

    def evaluate(self, session: Session, transaction: Transaction | None) -> Any:
        """The value of the expression for this session and transaction (may raise)."""
        return self._run(session, transaction)

    def __call__(self, session: Session, transaction: Transaction | None) -> bool:
        try:
            return self._run(session, transaction) is True
        except Exception as exc:
            log.error("expression failed", expression=self.source, error=_clean(str(exc)))
            return False

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def _sample_error(exc: Exception) -> str:
    if isinstance(exc, KeyError):  # results.arc on a transaction without an arc result
        return f"no key {exc} in a sample session: test for it first ({exc} in map)"
    return _clean(str(exc))


def _clean(message: str) -> str:
    return message.split(". ", 1)[0] if message.startswith("No such overload") else message


def _compile_error(source: str, message: str) -> ExpressionError:
    m = _POSITION.search(message)
    if m is None:
        return ExpressionError(source, message)
    reason = m.group(3).split("\n", 1)[0]
    return ExpressionError(source, reason, f"{m.group(1)}:{m.group(2)}")
