"""What ``serve`` needs from this host, checked before it starts: addresses, files, directories.

`mailgate.loader.load_config` checks that each value is well formed; `check` goes on to what
the value points at: that each listener address resolves to an address of this host and no two
listeners share one, that a TLS certificate and key load, that the quarantine directory can be
written, and that no file in the configuration directory looks like a plugin file that is not
read. Errors are raised as `ConfigError` (file, key, found, expected), the same shape as the
loader's; warnings are returned as `ConfigError` values too, so both read alike.

``mailgate check-config`` also probes whether a listener's port is already taken. That is a
warning, not an error: while mailgate runs, its own listeners hold those ports (a check before a
reload would otherwise always fail). The probe binds only unprivileged ports, and never listens.
"""

from __future__ import annotations

import errno
import getpass
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailgate.config import ConfigError, split_host_port
from mailgate.config.errors import Text
from mailgate.loader import CORE_FILE, PLUGIN_FILE, Config, ListenerConfig
from mailgate.relay import RelaySettings
from mailgate.smtp.listener import server_tls_context
from mailgate.sockaddr import SocketAddress
from mailgate.store.settings import StoreSettings

_DOTTED_NUMBERS = re.compile(r"^[0-9.]+$")
_BACKUP_SUFFIXES = (
    "~",
    ".bak",
    ".orig",
    ".old",
    ".disabled",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-dist",
    ".rpmnew",
    ".rpmsave",
)
"""Names that say "kept aside on purpose": no warning for ``20-spf.toml.bak``."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One socket a listener (or the metrics endpoint) will bind, and where it was configured."""

    source: str
    key: str
    address: str
    family: int = 0
    ip: str = ""
    port: int = 0
    path: str = ""

    def clashes_with(self, other: Endpoint) -> bool:
        """True when both cannot be bound at once (same socket path, or same port and address).

        A wildcard address (``0.0.0.0``, ``::``) takes the port on every address of its family;
        asyncio binds IPv6 sockets with ``IPV6_V6ONLY``, so the families do not clash.
        """
        if self.path or other.path:
            return self.path == other.path
        if self.port == 0 or self.port != other.port or self.family != other.family:
            return False
        wildcard = ("0.0.0.0", "::")
        return self.ip == other.ip or self.ip in wildcard or other.ip in wildcard


def check(config: Config, *, probe_ports: bool = True) -> list[ConfigError]:
    """Check what `config` points at; raise the first error, return the warnings.

    `probe_ports` also tries each unprivileged listener port (a warning when it is taken);
    ``serve`` leaves it off and names the listener if its bind fails.
    """
    warnings = misnamed_files(config.directory)
    seen: list[Endpoint] = []
    for endpoint in _endpoints(config):
        for other in seen:
            if endpoint.clashes_with(other):
                raise ConfigError(
                    endpoint.source,
                    endpoint.key,
                    endpoint.address,
                    "an address no other listener uses",
                    f"{other.source}: {other.key} is {other.address!r}",
                )
        seen.append(endpoint)
        warning = _probe(endpoint) if probe_ports else None
        if warning is not None:
            warnings.append(warning)
    for lc in config.listeners:
        _check_tls(lc)
    warnings += _check_relay(config.relay, core_source(config))
    warnings += _check_queued_relay_rules(config, core_source(config))
    warnings += _check_quarantine(config, core_source(config))
    return warnings


def _check_queued_relay_rules(config: Config, source: str) -> list[ConfigError]:
    """A warning when `[relay] address` has rules and mail is queued without `[queue]
    next_hop`: the queue routes with `[[queue.route]]` and takes the rules' ``else``."""
    if config.queue is None or config.queue.next_hop or config.relay.address.is_fixed:
        return []
    fallback = config.relay.address.default
    hint = (
        f"queued mail goes to {fallback} (the rules' else); "
        "route it with [[queue.route]] tables and their when"
    )
    return [ConfigError(source, "relay.address", "rules", "one address for queued mail", hint)]


def core_source(config: Config) -> str:
    """The path of ``mailgate.toml`` as errors name it."""
    return str(config.directory / CORE_FILE) if config.directory is not None else CORE_FILE


def misnamed_files(directory: Path | None) -> list[ConfigError]:
    """Warnings for files that look like plugin files but are not read (not ``NN-name.toml``).

    ``add_header.toml`` (no number) and ``20-add_header.conf`` (not ``.toml``) are skipped by
    the loader; an administrator who dropped one in expects the plugin to run.
    """
    if directory is None or not directory.is_dir():
        return []
    warnings = []
    for path in sorted(directory.iterdir()):
        name = path.name
        if name == CORE_FILE or PLUGIN_FILE.match(name) or name.startswith("."):
            continue
        if name.endswith(_BACKUP_SUFFIXES) or not path.is_file():
            continue
        numbered = re.match(r"^\d+-(.+?)(\.[^.]*)?$", name)
        if not (name.endswith(".toml") or numbered):
            continue
        stem = numbered.group(1) if numbered else name.removesuffix(".toml")
        warnings.append(
            ConfigError(
                str(path),
                "(file name)",
                Text("a name mailgate does not read"),
                f'"NN-name.toml" to enable a plugin, such as "20-{stem}.toml"',
            )
        )
    return warnings


def _endpoints(config: Config) -> Iterator[Endpoint]:
    for lc in config.listeners:
        yield from _listener_endpoints(lc)
    if config.metrics.address:
        address = config.metrics.address
        host, port = split_host_port(address)
        yield from _resolved(core_source(config), "metrics.address", address, host, port)


def _listener_endpoints(lc: ListenerConfig) -> Iterator[Endpoint]:
    key, address = lc.setting("address"), lc.settings.address
    if lc.type == "smtp":
        host, port = lc.settings.host_port
    else:
        parsed: SocketAddress = lc.settings.socket_address
        if parsed.is_unix:
            _check_socket_directory(lc, parsed.path)
            yield Endpoint(lc.source, key, address, path=parsed.path)
            return
        host, port = parsed.host, parsed.port
    yield from _resolved(lc.source, key, address, host, port)


def _resolved(source: str, key: str, address: str, host: str, port: int) -> Iterator[Endpoint]:
    """One endpoint per address `host` resolves to (an empty host: every address)."""
    if _DOTTED_NUMBERS.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(source, key, address, "an IPv4 address or a host name") from None
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            source, key, address, "a host name that resolves, or an IP address", str(exc.strerror)
        ) from None
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        _check_local(source, key, address, family, ip)
        yield Endpoint(source, key, address, family, ip, port)


def _check_local(source: str, key: str, address: str, family: int, ip: str) -> None:
    """Bind `ip` with port 0 (any free port, never listened on): is it an address of this host?"""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    source, key, address, "an address of this host", f"{ip}: {exc.strerror}"
                ) from None


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _probe(endpoint: Endpoint) -> ConfigError | None:
    """A warning when `endpoint`'s port is taken; unix sockets and privileged ports are skipped."""
    if endpoint.path or endpoint.port == 0 or endpoint.port < _unprivileged_port_start():
        return None
    with socket.socket(endpoint.family, socket.SOCK_STREAM) as probe:
        # As asyncio binds a listener: SO_REUSEADDR (a port in TIME_WAIT is free), V6ONLY.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if endpoint.family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((endpoint.ip, endpoint.port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None
            return ConfigError(
                endpoint.source,
                endpoint.key,
                endpoint.address,
                "a free port",
                f"{endpoint.ip} port {endpoint.port} is in use: by mailgate already running, "
                "or by another process",
            )
    return None


def _check_socket_directory(lc: ListenerConfig, path: str) -> None:
    directory = Path(path).parent
    key, address = lc.setting("address"), lc.settings.address
    if not directory.is_dir():
        raise ConfigError(lc.source, key, address, "a socket in an existing directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        expected = "a socket in a directory this user may write"
        raise ConfigError(lc.source, key, address, expected, f"checked as {getpass.getuser()}")


def _check_tls(lc: ListenerConfig) -> None:
    """The SMTP listener's certificate and key load, as STARTTLS will load them."""
    cert, key = getattr(lc.settings, "tls_cert", ""), getattr(lc.settings, "tls_key", "")
    if not cert:
        return
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            Path(path).open("rb").close()
        except OSError as exc:
            raise ConfigError(
                lc.source, lc.setting(name), path, "a readable PEM file", exc.strerror or str(exc)
            ) from None
    try:
        ssl.create_default_context().load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        raise ConfigError(
            lc.source, lc.setting("tls_cert"), cert, "a PEM certificate chain", _reason(exc)
        ) from None
    try:
        server_tls_context(lc.settings)  # exactly what the listener will do at start
    except ssl.SSLError as exc:
        raise ConfigError(
            lc.source, lc.setting("tls_key"), key, "the PEM private key of tls_cert", _reason(exc)
        ) from None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")


def _check_relay(relay: RelaySettings, source: str) -> list[ConfigError]:
    warnings = []
    if _DOTTED_NUMBERS.match(relay.host):
        try:
            ipaddress.IPv4Address(relay.host)
        except ValueError:
            raise ConfigError(
                source, "relay.address", relay.address.default, "an IPv4 address or a host name"
            ) from None
    else:
        try:
            socket.getaddrinfo(relay.host, relay.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            # Not fatal at start: the downstream is looked up per connection, and DNS may come
            # up after mailgate does.
            reason = str(exc.strerror)
            expected = "a host that resolves"
            warnings.append(
                ConfigError(source, "relay.address", relay.address.default, expected, reason)
            )
    if relay.tls_ca_file:
        try:
            ssl.create_default_context().load_verify_locations(cafile=relay.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                source, "relay.tls_ca_file", relay.tls_ca_file, "a PEM CA bundle", str(exc)
            ) from None
    return warnings


def _check_quarantine(config: Config, source: str) -> list[ConfigError]:
    """Where held messages would go: the directory, or the SQLite file's directory (a store
    on PostgreSQL is checked when it is opened). A default that cannot be made is only a
    warning: plugins that quarantine then get 451, nothing else fails."""
    if config.quarantine.backend == "directory":
        key, value, default = (
            "relay.quarantine_dir",
            config.relay.quarantine_dir,
            RelaySettings().quarantine_dir,
        )
        directory = Path(value)
    else:
        path = config.store.sqlite_path()
        if path is None:
            return []
        key, value, default = "store.url", config.store.url, StoreSettings().url
        directory = path.parent
    problem = _quarantine_problem(directory)
    if problem is None:
        return []
    error = ConfigError(source, key, value, *problem)
    if value != default:
        raise error
    return [error]


def _quarantine_problem(directory: Path) -> tuple[str, str] | None:
    """Why `directory` cannot hold quarantined messages: (expected, hint), or None when it can.

    A directory that does not exist yet is fine when it can be made (it is made on first use).
    """
    user = f"checked as {getpass.getuser()}"
    if directory.exists():
        if not directory.is_dir():
            return "a directory", "it is a file"
        if not os.access(directory, os.W_OK | os.X_OK):
            return "a directory this user may write", user
        return None
    parent = directory.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return "a directory that exists or can be made", f"{parent} is not writable, {user}"
    return None
