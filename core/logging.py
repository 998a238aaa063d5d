"""Logging: structlog over the standard library, JSON by default, one line per event.

Every line carries the ids bound with `bind_ids` (``session``, ``tx``) through contextvars, so
lines from one connection can be picked out of a busy log. Configure with the ``[logging]``
table (`LoggingSettings`) and `configure_logging`. Under workers (docs/scaling.md) every line
also names its process: ``worker=N`` (1 to N) or ``worker="master"`` (`name_process`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Literal

import structlog

Level = Literal["debug", "info", "warning", "error"]

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
    structlog.configure(
        # filter_by_level first: a line below the level costs no time stamp or context merge.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
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


def bind_ids(**ids: str) -> None:
    """Add ids (``session="s1a-3"``, ``tx="t1a-4"``) to every later log line in this task."""
    structlog.contextvars.bind_contextvars(**ids)


def unbind_ids(*names: str) -> None:
    """Stop adding the ids `names` (at the end of a transaction or session)."""
    structlog.contextvars.unbind_contextvars(*names)
