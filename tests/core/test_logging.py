"""Logging configuration: JSON lines with the session and transaction ids."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog

from mailgate.logging import (
    LoggingSettings,
    bind_ids,
    configure_logging,
    get_logger,
    unbind_ids,
)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> object:
    """Later tests read structlog's default output (capsys): leave logging as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    structlog_config = structlog.get_config()
    yield
    structlog.configure(**structlog_config)
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def logged(log_file: Path) -> list[dict[str, Any]]:
    """The JSON lines written to `log_file`, in order."""
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def test_json_lines_carry_session_and_tx_ids(tmp_path: Path) -> None:
    log_file = tmp_path / "mailgate.log"
    configure_logging(LoggingSettings(file=str(log_file)))
    bind_ids(session="s1", tx="t2")
    try:
        structlog.get_logger("mailgate.test").info("message outcome", verdict="accept")
    finally:
        unbind_ids("session", "tx")
    line = json.loads(log_file.read_text().splitlines()[-1])
    assert line["session"] == "s1" and line["tx"] == "t2"
    assert line["event"] == "message outcome" and line["level"] == "info"


def test_lines_below_the_level_are_dropped_before_structlog_and_the_rest_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file = tmp_path / "mailgate.log"
    configure_logging(LoggingSettings(level="warning", file=str(log_file)))
    log = get_logger("mailgate.test")
    bound: list[str] = []
    real_bind = structlog.get_logger("mailgate.test").__class__.bind

    def counting_bind(self: Any, **values: Any) -> Any:
        bound.append("bind")
        return real_bind(self, **values)

    monkeypatch.setattr(structlog.get_logger("mailgate.test").__class__, "bind", counting_bind)
    log.info("below the level", n=1)
    log.debug("below the level", n=2)
    assert bound == [] and not log.enabled(logging.INFO) and log.enabled(logging.WARNING)
    log.warning("at the level", n=3)
    log.error("above the level", n=4)
    assert len(bound) == 2
    assert [(line["event"], line["level"]) for line in logged(log_file)] == [
        ("at the level", "warning"),
        ("above the level", "error"),
    ]


def test_a_reload_to_a_lower_level_writes_what_was_dropped(tmp_path: Path) -> None:
    log_file = tmp_path / "mailgate.log"
    configure_logging(LoggingSettings(level="error", file=str(log_file)))
    log = get_logger("mailgate.test")
    log.info("dropped")
    configure_logging(LoggingSettings(level="info", file=str(log_file)))  # SIGHUP
    log.info("written")
    assert [line["event"] for line in logged(log_file)] == ["written"]


def test_a_test_capturing_lines_sees_every_level_whatever_was_configured(tmp_path: Path) -> None:
    configure_logging(LoggingSettings(level="error", file=str(tmp_path / "mailgate.log")))
    log = get_logger("mailgate.test")
    with structlog.testing.capture_logs() as captured:
        log.info("kept", n=1)
        log.debug("kept too", n=2)
    assert [(c["event"], c["log_level"]) for c in captured] == [
        ("kept", "info"),
        ("kept too", "debug"),
    ]


def test_critical_and_bound_lines_are_written_with_their_fields(tmp_path: Path) -> None:
    log_file = tmp_path / "mailgate.log"
    configure_logging(LoggingSettings(level="warning", file=str(log_file)))
    log = get_logger("mailgate.test")
    log.critical("disk full", path="/var/spool")
    log.bind(plugin="greylist").warning("store slow", ms=250)
    log.bind(plugin="greylist").info("below the level")
    lines = logged(log_file)
    assert [(line["event"], line["level"]) for line in lines] == [
        ("disk full", "critical"),
        ("store slow", "warning"),
    ]
    assert lines[0]["path"] == "/var/spool" and lines[1]["plugin"] == "greylist"
