"""The settings of the `rewrite` plugin: the keys of ``conf.d/NN-rewrite.toml``."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from mailgate.config import Check, Dynamic, fixed_dynamics
from mailgate.plugins.rewrite.lookup import is_address, is_domain_key, is_map_entry
from mailgate.plugins.rewrite.rules import RuleSettings

MapEntry = Annotated[
    str, Check(is_map_entry, 'an address "user@example.com" or a domain "@example.com"')
]
"""A value of the ``sender`` or ``recipients`` map."""

FullAddress = Annotated[str, Check(is_address, 'an address such as "user@example.com"')]
"""A catch-all target or a known recipient."""


@dataclass(slots=True)
class RewriteSettings:
    """What to rewrite, and how addresses are compared."""

    sender: Dynamic[dict[str, MapEntry]] = field(default=Dynamic.fixed({}))
    """Envelope sender map: ``"old@x" = "new@y"``, ``"@old.example" = "@new.example"``.
    Per transaction: a list of ``{ if = "...", then = { ... } }`` rules ending in ``{ else =
    { ... } }``, read at MAIL (``client``, ``auth``, ``sender``; no ``rcpt`` yet)."""
    recipients: Dynamic[dict[str, MapEntry | list[MapEntry]]] = field(default=Dynamic.fixed({}))
    """Recipient map; a list value expands one recipient into several. Per transaction: rules
    read at each RCPT (``rcpt`` is the recipient being rewritten)."""
    subaddress_delimiter: str = "+"
    """Characters that start a subaddress (``bob+tag``); empty: no subaddresses."""
    strip_subaddress: bool = False
    """Deliver ``bob+tag@x`` as ``bob@x`` (recipients only; senders keep theirs)."""
    case_insensitive_local: bool = False
    """Compare local parts without case (domains are always compared without case)."""
    catch_all: Dynamic[dict[str, FullAddress]] = field(default=Dynamic.fixed({}))
    """``"@example.com" = "postmaster@example.com"``: unknown recipients of the domain go there.
    Per transaction: rules read at each RCPT, like `recipients`."""
    known_recipients: list[FullAddress] = field(default_factory=list)
    """The real recipients of the catch-all domains."""
    known_recipients_file: pathlib.Path | None = None
    """A file of more known recipients, one address a line; ``#`` lines and blank lines skipped."""
    rewrite_headers: bool = False
    """Also rewrite From: (sender map) and To:/Cc: (one-to-one recipient entries)."""
    sender_rules: list[RuleSettings] = field(default_factory=list)
    """Ordered regex/expression rules for the envelope sender, asked when the map has no entry."""
    recipient_rules: list[RuleSettings] = field(default_factory=list)
    """Ordered rules for each recipient, asked when the map has no entry (before the catch-all)."""
    use_directory: bool = False
    """Expand aliases and lists from the directory (docs/directory.md), after the recipient
    map; a recipient the directory knows is never caught by the catch-all."""
    known_from_file: list[str] = field(init=False, default_factory=list)
    """The addresses read from `known_recipients_file` at load."""

    @property
    def header_rules(self) -> bool:
        """True when some rule also rewrites header addresses."""
        return any(r.headers for r in (*self.sender_rules, *self.recipient_rules))

    def __post_init__(self) -> None:
        fixed_dynamics(self)
        for senders in self.sender.values():
            _check_keys("sender", senders, is_map_entry)
        for recipients in self.recipients.values():
            _check_keys("recipients", recipients, is_map_entry)
            for key, value in recipients.items():
                if isinstance(value, list) and not value:
                    raise ValueError(f"recipients: {key!r} expands to an empty list")
        for catch_all in self.catch_all.values():
            _check_keys("catch_all", catch_all, is_domain_key)
        for char in self.subaddress_delimiter:
            if char == "@" or char.isspace() or char == ".":
                raise ValueError(f"subaddress_delimiter may not contain {char!r}")
        if self.known_recipients_file is not None:
            self.known_from_file = read_known_recipients(self.known_recipients_file)


def _check_keys(name: str, table: Mapping[str, object], test: Callable[[str], bool]) -> None:
    expected = "@domain" if name == "catch_all" else '"user@example.com" or "@example.com"'
    for key in table:
        if not test(key):
            raise ValueError(f"{name}: the key {key!r} is not {expected}")


def read_known_recipients(path: pathlib.Path) -> list[str]:
    """The addresses in `path`, one a line; raises `ValueError` naming the key and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"known_recipients_file: cannot read {path}: {exc}") from None
    return list(_addresses(path, text.splitlines()))


def _addresses(path: pathlib.Path, lines: Iterable[str]) -> Iterable[str]:
    for number, line in enumerate(lines, 1):
        address = line.strip()
        if not address or address.startswith("#"):
            continue
        if not is_address(address):
            raise ValueError(
                f"known_recipients_file: {path} line {number}: {address!r} is not an address"
            )
        yield address
