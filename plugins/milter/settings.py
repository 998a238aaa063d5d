"""The settings of the `milter` plugin: the keys of ``conf.d/NN-milter.toml``.

One milter per file (its keys at the top level, `MilterSettings`), or several in one file as
``milters = [{...}, {...}]`` (each entry a `MilterEntry`, the same keys), run in list order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

from mailgate.config import Check, Dynamic, fixed_dynamics
from mailgate.milter.protocol import DEFAULT_MAX_FRAME
from mailgate.sockaddr import is_socket_address

Stage = Literal["connect", "helo", "mail", "rcpt", "data", "message"]
"""One SMTP stage a milter can be called at."""

STAGES: tuple[Stage, ...] = ("connect", "helo", "mail", "rcpt", "data", "message")
"""The SMTP stages at which the milter can be called, in order."""

FAILURE_POLICIES = ("tempfail", "reject", "accept", "skip")
"""What a failed milter turns into; see `MilterEntry.on_failure`."""

FailurePolicy = Literal["tempfail", "reject", "accept", "skip"]
"""One of `FAILURE_POLICIES`."""

DEFAULT_MAX_RESPONSE = 50 * 1024 * 1024
"""Stalwart's default ``max-response-size``: 50 MiB of replies per message."""


MilterAddress = Annotated[
    str, Check(is_socket_address, '"inet:HOST:PORT", "inet:PORT@HOST" or "unix:/path"')
]
"""A milter's socket, spelled as in Postfix's ``smtpd_milters``."""


@dataclass(slots=True)
class MilterEntry:
    """One external milter: where it listens, when to call it, how long to wait, how it fails."""

    address: MilterAddress = "inet:127.0.0.1:8891"
    """The milter's socket: ``inet:HOST:PORT`` (sendmail's ``inet:PORT@HOST``), ``unix:/path``."""
    name: str = ""
    """The milter's name in logs and in ``transaction.results`` (default: the address)."""
    version: Literal[2, 6] = 6
    """The protocol version offered: 6 (everything) or 2 (for very old milters)."""
    stages: list[Stage] = field(default_factory=lambda: list(STAGES))
    """Stages at which the milter is called and its answer used; steps of stages left out are
    sent together at the next listed stage (fewer round trips, later decisions)."""
    connect_timeout: Dynamic[float] = field(default=Dynamic.fixed(5.0))
    """Seconds to open the connection (and the TLS handshake) and negotiate. Rules are read
    when the connection opens (the stage that needs it: ``client``, ``helo``, ...)."""
    command_timeout: Dynamic[float] = field(default=Dynamic.fixed(10.0))
    """Seconds to wait for the reply to each command (Postfix: milter_command_timeout). Rules
    are read at each stage, with what is known there (no ``sender`` before MAIL)."""
    eom_timeout: Dynamic[float] = field(default=Dynamic.fixed(20.0))
    """Seconds to wait for the end-of-message reply; each PROGRESS starts it again. Keep the
    plugin's own ``timeout`` (default 30 s) larger. Rules are read at the end of data."""
    on_failure: Dynamic[FailurePolicy] = field(default=Dynamic.fixed("tempfail"))
    """A failed milter (unreachable, hung, dying, malformed or unexpected replies):
    ``tempfail`` (451 4.7.1), ``reject`` (554 5.7.1), ``accept`` (go on without this milter for
    the rest of the session) or ``skip`` (go on without it for this message only). Rules are
    read when the failure happens, with what is known at that stage."""
    hostname: str = ""
    """The value of the ``j`` macro (mailgate's host name); default: this machine's name."""
    max_frame: int = DEFAULT_MAX_FRAME
    """Largest reply frame accepted from the milter, in bytes."""
    max_response_size: int = DEFAULT_MAX_RESPONSE
    """Most bytes the milter may send for one message (every reply and action frame from MAIL
    to its end-of-message reply, frame headers included); more fails the milter."""
    tls: bool = False
    """Speak TLS to the milter (a milter on another host, or behind a TLS terminator)."""
    tls_ca_file: str = ""
    """PEM file of the CAs that may sign the milter's certificate; empty: the system's CAs."""
    tls_verify: bool = True
    """Check the milter's certificate (chain and name); false only for tests and labs."""
    tls_server_name: str = ""
    """The name the certificate must carry (and SNI); default: the address's host."""
    tls_cert_file: str = ""
    """A client certificate (PEM) to present, for milters that ask for one."""
    tls_key_file: str = ""
    """The client certificate's key (PEM); empty: in ``tls_cert_file``."""

    def __post_init__(self) -> None:
        fixed_dynamics(self)
        if any(p not in FAILURE_POLICIES for p in self.on_failure.values()):
            raise ValueError(f"on_failure must be one of {FAILURE_POLICIES}")
        for stage in self.stages:
            if stage not in STAGES:
                raise ValueError(f"stages: unknown stage {stage!r}, expected one of {STAGES}")
        if self.version not in (2, 6):
            raise ValueError("version must be 2 or 6")
        for name in ("connect_timeout", "command_timeout", "eom_timeout"):
            if any(seconds <= 0 for seconds in getattr(self, name).values()):
                raise ValueError(f"{name} must be positive")
        if self.max_response_size < 5:
            raise ValueError("max_response_size: must be at least 5 bytes (one reply frame)")
        if self.address.startswith("unix:") and self.tls:
            raise ValueError("tls: a unix socket needs no TLS (it does not leave the host)")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file: needs tls_cert_file")
        if not self.tls:
            for name in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name"):
                if getattr(self, name):
                    raise ValueError(f"{name}: set, but tls is false")


_ENTRY_DEFAULTS = MilterEntry()


@dataclass(slots=True)
class MilterSettings(MilterEntry):
    """A ``conf.d`` file of the `milter` plugin: one milter (the keys of `MilterEntry`), or a
    chain of them in `milters`."""

    milters: list[MilterEntry] = field(default_factory=list)
    """Several milters in one file, called in list order, each a table of the keys above;
    the top-level milter keys are then not used (and must not be set)."""

    def __post_init__(self) -> None:
        MilterEntry.__post_init__(self)
        if not self.milters:
            return
        for f in dataclasses.fields(MilterEntry):
            if getattr(self, f.name) != getattr(_ENTRY_DEFAULTS, f.name):
                raise ValueError(
                    f"{f.name}: set at the top level together with milters = [...]; put it "
                    "in the milters entries"
                )
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.milters):
            name = entry.name or entry.address
            if name in seen:
                raise ValueError(
                    f"milters: entries {seen[name]} and {i} are both named {name!r}; give "
                    "each its own name"
                )
            seen[name] = i

    def entries(self) -> list[MilterEntry]:
        """The milters this file configures, in calling order."""
        if self.milters:
            return list(self.milters)
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(MilterEntry)}
        return [MilterEntry(**own)]
