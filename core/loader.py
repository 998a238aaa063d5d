"""Read a configuration directory and build everything it describes, checking every key.

``DIR/mailgate.toml`` (optional) holds the core tables: ``[mailgate]``, ``[logging]``,
``[metrics]``, ``[dns]``, ``[authentication_results]``, ``[[listener]]``, ``[relay]``,
``[store]``, ``[queue]``, ``[relay_control]`` and ``[sender_auth]``. Each
``DIR/NN-name.toml`` enables one plugin, in file-name order; the plugin is found by
entry-point name in the group ``mailgate.plugins``.
Any mistake is a `mailgate.config.ConfigError` naming the file and the key; an enabled plugin
whose class breaks the plugin contract (`mailgate.hookspecs`) is a `mailgate.config.PluginError`
naming the file, the plugin, the hook and the reason.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pluggy

from mailgate.authentication_results import AuthenticationResultsSettings
from mailgate.config import ConfigError, Dynamic, PluginError, is_host_port, load_settings
from mailgate.config.errors import Text
from mailgate.console.settings import ConsoleSettings
from mailgate.contract import ContractError, check_plugin_class
from mailgate.dns import DnsSettings
from mailgate.event_loop import EventLoopChoice, uvloop_available
from mailgate.expressions import Expression, ExpressionError
from mailgate.iprev import ClientNames
from mailgate.logging import LoggingSettings
from mailgate.pipeline import MESSAGE_PARTS, EnabledPlugin, ErrorPolicy, Pipeline, declared_reads
from mailgate.plugin import ENTRY_POINT_GROUP
from mailgate.plugins.relay_control import RelayControl
from mailgate.plugins.sender_auth import SenderAuth
from mailgate.policy.settings import PolicyListenerSettings
from mailgate.quarantine.settings import QuarantineSettings
from mailgate.queue.settings import QueueSettings
from mailgate.relay import RelaySettings
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.store.settings import StoreSettings

CORE_FILE = "mailgate.toml"
PLUGIN_FILE = re.compile(r"^(\d+)-([A-Za-z0-9_.-]+)\.toml$")
RESERVED = frozenset({"plugin", "enabled", "when", "timeout", "on_error", "concurrent"})
"""Keys of a plugin file that configure how the plugin is run, not the plugin itself."""
RELAY_CONTROL = "relay_control"
SENDER_AUTH = "sender_auth"
BUILT_IN = {RELAY_CONTROL: RelayControl, SENDER_AUTH: SenderAuth}
"""Plugins that are always on, configured in ``mailgate.toml``, and run before ``conf.d``."""


@dataclass(slots=True)
class MailgateSettings:
    """The ``[mailgate]`` table."""

    hostname: str = ""
    """This host's name, used by listeners whose own `hostname` is empty; empty: the FQDN."""
    event_loop: EventLoopChoice = "auto"
    """``auto`` (uvloop if installed, else asyncio's own loop), ``uvloop`` or ``asyncio``."""
    workers: int = 0
    """Processes serving the listeners; 0: one per core (or ``$MAILGATE_WORKERS`` when set).
    1 is a single process; more run under a master (see docs/scaling.md)."""
    worker_sockets: Literal["reuseport", "shared"] = "reuseport"
    """How workers share a TCP listener: ``reuseport`` (one ``SO_REUSEPORT`` socket each, the
    kernel spreads connections) or ``shared`` (one socket, accepted by whichever worker wakes)."""
    drain_timeout: float = 30.0
    """On SIGTERM under workers: seconds open sessions get to finish before they get 421."""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError("workers must be 0 (one per core) or more")
        if self.drain_timeout < 0:
            raise ValueError("drain_timeout must not be negative")

    def worker_count(self) -> int:
        """How many workers to run: `workers`, else ``$MAILGATE_WORKERS``, else the cores."""
        if self.workers:
            return self.workers
        env = os.environ.get("MAILGATE_WORKERS", "").strip()
        if env.isdigit() and int(env) > 0:
            return int(env)
        return len(os.sched_getaffinity(0))


@dataclass(slots=True)
class MetricsSettings:
    """The ``[metrics]`` table."""

    address: str = ""
    """``host:port`` to serve Prometheus metrics on (``GET /metrics``); empty: no metrics."""


@dataclass(slots=True)
class ListenerConfig:
    """One ``[[listener]]`` table: its `type` (``smtp``, ``milter`` or ``policy``), its settings."""

    type: str
    settings: Any
    source: str
    key: str = ""
    """Its table in `source` (``listener[0]``); empty for a command-line option or the default."""

    def setting(self, name: str) -> str:
        """The dotted key of setting `name`, as errors name it: ``listener[0].tls_cert``."""
        return f"{self.key}.{name}" if self.key else name


@dataclass(slots=True)
class PluginConfig:
    """One enabled plugin: where it was configured and how it runs."""

    name: str
    """The entry-point name."""
    source: str
    """The file that enabled it."""
    cls: type
    settings: Any
    when: Expression | None = None
    timeout: float = 30.0
    on_error: ErrorPolicy = ErrorPolicy.TEMPFAIL
    concurrent: bool = False
    reads: frozenset[str] = MESSAGE_PARTS
    """The class's ``reads`` (which parts of the message it reads); not a conf.d key."""


@dataclass(slots=True)
class Config:
    """A whole configuration, checked. `pipeline()` builds the plugin chain it describes."""

    directory: Path | None
    mailgate: MailgateSettings = field(default_factory=MailgateSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    authentication_results: AuthenticationResultsSettings = field(
        default_factory=AuthenticationResultsSettings
    )
    listeners: list[ListenerConfig] = field(default_factory=list)
    relay: RelaySettings = field(default_factory=RelaySettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    queue: QueueSettings | None = None
    """Set when there is a ``[queue]`` table or a listener with ``egress = "queue"``: the node
    then opens the store and delivers from the queue."""
    relay_control: PluginConfig | None = None
    sender_auth: PluginConfig | None = None
    plugins: list[PluginConfig] = field(default_factory=list)
    disabled: list[tuple[str, str]] = field(default_factory=list)
    """``(plugin, file)`` of plugin files with ``enabled = false``."""

    @property
    def chain(self) -> list[PluginConfig]:
        """The plugins in calling order: relay control, sender ownership, then ``conf.d``."""
        first = [p for p in (self.relay_control, self.sender_auth) if p is not None]
        return first + self.plugins

    def pipeline(self) -> Pipeline:
        """Make one instance of each plugin and the `Pipeline` that calls them.

        A plugin enabled by two files runs twice; the second is named ``name:file-stem``.
        """
        enabled = [_instantiate(p, self.dns, self.store) for p in self.chain]
        seen: set[str] = set()
        for e in enabled:
            if e.name in seen:
                e.name = f"{e.name}:{Path(e.source).stem}"
            seen.add(e.name)
        try:
            pipeline = Pipeline(enabled)
        except pluggy.PluginValidationError as exc:
            # The class was checked at load; pluggy may still refuse what an instance added.
            e = next(e for e in enabled if e.instance is exc.plugin)
            reason = " ".join(str(exc).split())
            raise PluginError(e.source, e.name, "", f"refused by pluggy: {reason}") from None
        if self.dns.reverse_lookups:
            pipeline.client_names = ClientNames(self.dns)
        results = self.authentication_results
        if results.header:
            authserv_id = results.authserv_id or self.mailgate.hostname
            pipeline.authentication_results = dataclasses.replace(results, authserv_id=authserv_id)
        return pipeline


def installed_plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """Every plugin registered under the ``mailgate.plugins`` entry-point group, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def plugin_files(directory: Path) -> list[Path]:
    """The ``NN-name.toml`` files of `directory`, in the order their plugins run."""
    return sorted(p for p in directory.iterdir() if PLUGIN_FILE.match(p.name) and p.is_file())


def load_config(
    directory: Path | str | None,
    *,
    listen: str | None = None,
    relay: str | None = None,
    milter: str | None = None,
    policy: str | None = None,
) -> Config:
    """Read and check `directory` (None: built-in defaults); `listen`/`relay` override addresses.

    `listen` replaces the address of the first SMTP listener (one is made if there is none);
    `relay` replaces ``relay.address``; `milter` replaces the address of the first milter
    listener (one is made, and then no default SMTP listener, if there is none); `policy` does
    the same for the first policy listener. Raises
    `ConfigError`; plugins are not yet instantiated (`Config.pipeline` does that).
    """
    path = Path(directory) if directory is not None else None
    if path is not None and not path.is_dir():
        raise ConfigError(str(path), "(directory)", Text("no such directory"), "a directory")
    core_path = path / CORE_FILE if path is not None else None
    core: dict[str, Any] = {}
    source = str(core_path) if core_path is not None else CORE_FILE
    if core_path is not None and core_path.exists():
        core = _read_toml(core_path)
    config = _core(core, source, path)
    for built_in in (config.relay_control, config.sender_auth):
        if built_in is not None and not core:
            built_in.source = "built in"
    if milter is not None:
        _override_milter(config, milter)
    if policy is not None:
        _override_policy(config, policy)
    _override(config, listen=listen, relay=relay)
    if path is not None:
        installed = installed_plugins()
        for file in plugin_files(path):
            enabled, plugin = _plugin(file, installed)
            if enabled:
                config.plugins.append(plugin)
            else:
                config.disabled.append((plugin.name, plugin.source))
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(syntax)", Text(str(exc)), "valid TOML") from None
    except OSError as exc:
        raise ConfigError(
            str(path), "(file)", Text(exc.strerror or str(exc)), "a readable file"
        ) from None


_CORE_KEYS = (
    "mailgate",
    "logging",
    "metrics",
    "dns",
    "authentication_results",
    "listener",
    "relay",
    "store",
    "quarantine",
    "console",
    "queue",
    RELAY_CONTROL,
    SENDER_AUTH,
)


def _core(table: dict[str, Any], source: str, path: Path | None) -> Config:
    for key in table:
        if key not in _CORE_KEYS:
            raise ConfigError.unknown_key(source, key, key, _CORE_KEYS)
    config = Config(directory=path)
    config.mailgate = load_settings(
        MailgateSettings, _table(table, "mailgate", source), source=source, prefix="mailgate"
    )
    if config.mailgate.event_loop == "uvloop" and not uvloop_available():
        raise ConfigError(
            source,
            "mailgate.event_loop",
            "uvloop",
            '"auto" or "asyncio"',
            "uvloop is not installed: pip install uvloop",
        )
    config.logging = load_settings(
        LoggingSettings, _table(table, "logging", source), source=source, prefix="logging"
    )
    config.metrics = _metrics(_table(table, "metrics", source), source)
    config.dns = load_settings(
        DnsSettings, _table(table, "dns", source), source=source, prefix="dns"
    )
    config.authentication_results = load_settings(
        AuthenticationResultsSettings,
        _table(table, "authentication_results", source),
        source=source,
        prefix="authentication_results",
    )
    relay = _table(table, "relay", source)
    if not isinstance(relay.get("address"), list):  # a list: rules, checked by load_settings
        _check_address(relay.get("address", "127.0.0.1:25"), source, "relay.address")
    config.relay = load_settings(RelaySettings, relay, source=source, prefix="relay")
    listeners = table.get("listener", [])
    if not isinstance(listeners, list) or not all(isinstance(t, dict) for t in listeners):
        raise ConfigError(source, "listener", listeners, "[[listener]] tables")
    for i, t in enumerate(listeners):
        config.listeners.append(_listener(t, source, f"listener[{i}]"))
    config.store = load_settings(
        StoreSettings, _table(table, "store", source), source=source, prefix="store"
    )
    config.console = load_settings(
        ConsoleSettings, _table(table, "console", source), source=source, prefix="console"
    )
    config.quarantine = load_settings(
        QuarantineSettings,
        _table(table, "quarantine", source),
        source=source,
        prefix="quarantine",
    )
    queued = any(getattr(lc.settings, "egress", "") == "queue" for lc in config.listeners)
    if "queue" in table or queued:
        config.queue = load_settings(
            QueueSettings, _table(table, "queue", source), source=source, prefix="queue"
        )
    config.relay_control = _built_in(table, source, RELAY_CONTROL)
    config.sender_auth = _built_in(table, source, SENDER_AUTH)
    return config


def _table(table: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(source, key, value, f"a [{key}] table")
    return value


def _metrics(table: Mapping[str, Any], source: str) -> MetricsSettings:
    address = table.get("address", "")
    if address != "" and (not isinstance(address, str) or not is_host_port(address)):
        raise ConfigError(source, "metrics.address", address, '"host:port", or "" for none')
    return load_settings(MetricsSettings, table, source=source, prefix="metrics")


def _check_address(value: object, source: str, key: str) -> None:
    if not isinstance(value, str) or not is_host_port(value):
        raise ConfigError(source, key, value, '"host:port"')


def _listener(table: Mapping[str, Any], source: str, key: str) -> ListenerConfig:
    kind = table.get("type", "smtp")
    if kind == "smtp":
        _check_address(table.get("address", "127.0.0.1:2525"), source, f"{key}.address")
        settings: Any = load_settings(
            SmtpListenerSettings, table, source=source, prefix=key, skip=frozenset({"type"})
        )
    elif kind == "milter":
        settings = _milter_settings(table, source, key)
    elif kind == "policy":
        settings = load_settings(
            PolicyListenerSettings, table, source=source, prefix=key, skip=frozenset({"type"})
        )
    else:
        raise ConfigError(source, f"{key}.type", kind, 'one of "smtp", "milter", "policy"')
    return ListenerConfig(kind, settings, source, key)


def _milter_settings(table: Mapping[str, Any], source: str, key: str) -> Any:
    # Looked up by name: the milter listener is built separately and may not be there yet.
    milter = importlib.import_module("mailgate.milter")
    settings_cls = getattr(milter, "MilterListenerSettings", None)
    if settings_cls is None:
        expected = '"smtp" (this build has no milter listener yet)'
        raise ConfigError(source, f"{key}.type", "milter", expected)
    return load_settings(settings_cls, table, source=source, prefix=key, skip=frozenset({"type"}))


def _override_milter(config: Config, address: str) -> None:
    settings = _milter_settings({}, "--milter", "milter")
    try:
        settings.address = address
        type(settings).__post_init__(settings)
    except ValueError as exc:
        raise ConfigError("--milter", "address", address, "inet:HOST:PORT or unix:/path") from exc
    first = next((lc for lc in config.listeners if lc.type == "milter"), None)
    if first is None:
        config.listeners.append(ListenerConfig("milter", settings, "--milter"))
    else:
        first.settings.address, first.source, first.key = address, "--milter", ""


def _override_policy(config: Config, address: str) -> None:
    try:
        settings = PolicyListenerSettings(address=address)
    except ValueError as exc:
        raise ConfigError("--policy", "address", address, "inet:HOST:PORT or unix:/path") from exc
    first = next((lc for lc in config.listeners if lc.type == "policy"), None)
    if first is None:
        config.listeners.append(ListenerConfig("policy", settings, "--policy"))
    else:
        first.settings.address, first.source, first.key = address, "--policy", ""


def _override(config: Config, *, listen: str | None, relay: str | None) -> None:
    smtp = [lc for lc in config.listeners if lc.type == "smtp"]
    if not smtp and (listen is not None or not config.listeners):
        config.listeners.insert(0, ListenerConfig("smtp", SmtpListenerSettings(), "(default)"))
    if listen is not None:
        _check_address(listen, "--listen", "address")
        first = next(lc for lc in config.listeners if lc.type == "smtp")
        first.settings.address = listen
        first.source, first.key = "--listen", ""
    if relay is not None:
        _check_address(relay, "--relay", "address")
        config.relay.address = Dynamic.fixed(relay)


def _run_options(
    table: Mapping[str, Any], source: str, name: str, cls: type
) -> tuple[bool, PluginConfig]:
    prefix = name if source.endswith(CORE_FILE) else ""
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(source, _key(prefix, "enabled"), enabled, "true or false")
    timeout = table.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(source, _key(prefix, "timeout"), timeout, "a positive number of seconds")
    policy = table.get("on_error", "tempfail")
    policies = {p.value: p for p in ErrorPolicy}
    if policy not in policies:
        expected = "one of " + ", ".join(f'"{v}"' for v in policies)
        raise ConfigError(source, _key(prefix, "on_error"), policy, expected)
    if enabled:  # a broken plugin can still be switched off with enabled = false
        try:
            check_plugin_class(cls)
        except ContractError as exc:
            raise PluginError(source, name, exc.where, exc.reason) from None
    concurrent = table.get("concurrent", getattr(cls, "concurrent", False) is True)
    if not isinstance(concurrent, bool):
        raise ConfigError(source, _key(prefix, "concurrent"), concurrent, "true or false")
    try:
        reads = declared_reads(cls)
    except ValueError:
        reads = MESSAGE_PARTS  # only for a disabled plugin, which never runs
    when = table.get("when")
    condition = None
    if when is not None:
        if not isinstance(when, str):
            raise ConfigError(source, _key(prefix, "when"), when, "a CEL expression (string)")
        try:
            condition = Expression(when)
        except ExpressionError as exc:
            raise ConfigError(
                source, _key(prefix, "when"), when, f"a valid CEL expression: {exc}"
            ) from None
    settings_cls = getattr(cls, "Settings", None)
    rest = {k: v for k, v in table.items() if k not in RESERVED}
    if settings_cls is None:
        for k in rest:
            raise ConfigError.unknown_key(source, _key(prefix, k), k, RESERVED)
        settings = None
    elif not (isinstance(settings_cls, type) and dataclasses.is_dataclass(settings_cls)):
        settings = None  # only for a disabled plugin, which is never built
    else:
        settings = load_settings(settings_cls, rest, source=source, prefix=prefix)
    plugin = PluginConfig(
        name, source, cls, settings, condition, float(timeout), policies[policy], concurrent, reads
    )
    return enabled, plugin


def _key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _built_in(core: Mapping[str, Any], source: str, name: str) -> PluginConfig | None:
    table = _table(core, name, source)
    if "plugin" in table:
        raise ConfigError.unknown_key(source, f"{name}.plugin", "plugin", RESERVED)
    enabled, plugin = _run_options(table, source, name, BUILT_IN[name])
    plugin.source = source
    return plugin if enabled else None


def _plugin(
    file: Path, installed: dict[str, importlib.metadata.EntryPoint]
) -> tuple[bool, PluginConfig]:
    source = str(file)
    table = _read_toml(file)
    match = PLUGIN_FILE.match(file.name)
    assert match is not None
    name = table.get("plugin", match.group(2))
    if not isinstance(name, str):
        raise ConfigError(source, "plugin", name, "a plugin name (string)")
    if name in BUILT_IN:
        raise ConfigError(
            source, "plugin", name, f"another plugin ({name} is set in mailgate.toml)"
        )
    ep = installed.get(name)
    if ep is None:
        known = ", ".join(sorted(installed)) or "none installed"
        raise ConfigError(source, "plugin", name, f"an installed plugin ({known})")
    try:
        cls = ep.load()
    except Exception as exc:
        raise ConfigError(
            source, "plugin", name, f"a plugin that imports ({type(exc).__name__}: {exc})"
        ) from None
    return _run_options(table, source, name, cls)


def _wants(cls: type, table: str) -> bool:
    """True when the plugin's ``__init__`` takes a keyword named after a core table (``dns``,
    ``store``): it is then given that table."""
    try:
        return table in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _instantiate(p: PluginConfig, dns: DnsSettings, store: StoreSettings) -> EnabledPlugin:
    tables = {"dns": dns, "store": store}
    extra = {name: value for name, value in tables.items() if _wants(p.cls, name)}
    try:
        instance = p.cls(p.settings, **extra) if p.settings is not None else p.cls(**extra)
    except (TypeError, ValueError) as exc:
        refused = Text("settings the plugin refused")
        raise ConfigError(p.source, "(settings)", refused, str(exc)) from None
    except Exception as exc:  # a SIGHUP reload must refuse it, not die in the signal handler
        reason = f"raised {type(exc).__name__}: {exc}"
        raise PluginError(p.source, p.name, "__init__", reason) from None
    return EnabledPlugin(
        name=p.name,
        instance=instance,
        when=p.when,
        timeout=p.timeout,
        on_error=p.on_error,
        concurrent=p.concurrent,
        source=p.source,
        reads=p.reads,
    )
