"""Logging: structlog over the standard library, JSON by default, one line per event.

Every line carries the ids bound with `bind_ids` (``session``, ``tx``) through contextvars, so
lines from one connection can be picked out of a busy log. Configure with the ``[logging]``
table (`LoggingSettings`) and `configure_logging`. Under workers (docs/scaling.md) every line
also names its process: ``worker=N`` (1 to N) or ``worker="master"`` (`name_process`).

Modules log through `get_logger`: a line below the configured level then costs one comparison,
where structlog's own filter costs a logger bound per call (~3 µs, several lines a message).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Literal

import structlog

Level = Literal["debug", "info", "warning", "error"]

_processors: list[Any] = []
"""The processor chain `configure_logging` gives structlog, changed in place on a reload."""

_process_name: int | str | None = None
"""What `name_process` set: the ``worker`` field of every line, or None for no such field."""


def name_process(name: int | str | None) -> None:
    """Add ``worker=name`` to every later line of this process (a worker's number, or
    ``"master"``); None: no ``worker`` field (a single process)."""
    global _process_name
    _process_name = name


def _add_process_name(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    if _process_name is not None:
        event.setdefault("worker", _process_name)
    return event


@dataclass(slots=True)
class LoggingSettings:
    """The ``[logging]`` table of ``mailgate.toml``."""

    level: Level = "info"
    """Lowest level written: ``debug``, ``info``, ``warning`` or ``error``."""
    format: Literal["json", "console"] = "json"
    """``json``: one JSON object per line; ``console``: aligned, coloured text for a terminal."""
    file: str = ""
    """Write to this file (appending) instead of standard error."""


def configure_logging(settings: LoggingSettings | None = None) -> None:
    """Route structlog and the standard library's logging to one handler, as `settings` say.

    May be called again (SIGHUP) to change the level or format.
    """
    settings = settings or LoggingSettings()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process_name,
    ]
    renderer: Any
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    # filter_by_level first: a line below the level costs no time stamp or context merge.
    _processors[:] = [
        structlog.stdlib.filter_by_level,
        *shared,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=_processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler: logging.Handler = (
        logging.FileHandler(settings.file) if settings.file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if getattr(old, "_mailgate", False):
            root.removeHandler(old)
            old.close()
    handler._mailgate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.level.upper())


def _filtered() -> bool:
    """True while structlog runs the chain `configure_logging` made, whose first step drops
    the lines below the level (a test capturing lines empties or replaces it)."""
    chain = structlog.get_config()["processors"]
    return chain is _processors and bool(chain) and chain[0] is structlog.stdlib.filter_by_level


class Logger:
    """One module's logger: structlog's, with lines below the configured level dropped before
    structlog binds anything. The keyword arguments become the line's fields."""

    __slots__ = ("_logger", "_std")

    def __init__(self, name: str) -> None:
        self._logger = structlog.get_logger(name)
        self._std = logging.getLogger(name)

    def _below_level(self, level: int) -> bool:
        # Exactly what structlog's filter_by_level would drop, decided before it binds.
        return not self._std.isEnabledFor(level) and _filtered()

    def enabled(self, level: int) -> bool:
        """True if a line at `level` (``logging.INFO`` ...) would be written: a caller checks
        this before working out fields that cost something."""
        return not self._below_level(level)

    def _line(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        # structlog's method is looked up only for a line that is written: on its lazy
        # logger the lookup itself binds a logger.
        if not self._below_level(level):
            getattr(self._logger, method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        """A line at debug level."""
        self._line(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """A line at info level."""
        self._line(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """A line at warning level."""
        self._line(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """A line at error level."""
        self._line(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """A line at error level with the exception being handled."""
        self._line(logging.ERROR, "exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """A line at critical level."""
        self._line(logging.CRITICAL, "critical", event, fields)

    def bind(self, **fields: Any) -> Any:
        """structlog's logger with `fields` on every line it writes (it filters by level as
        structlog does: for a hot path, keep using this logger and pass the fields)."""
        return self._logger.bind(**fields)


def get_logger(name: str) -> Logger:
    """The logger for module `name` (``mailgate.flow`` ...)."""
    return Logger(name)


def bind_ids(**ids: str) -> None:
    """Add ids (``session="s1a-3"``, ``tx="t1a-4"``) to every later log line in this task."""
    structlog.contextvars.bind_contextvars(**ids)


def unbind_ids(*names: str) -> None:
    """Stop adding the ids `names` (at the end of a transaction or session)."""
    structlog.contextvars.unbind_contextvars(*names)
