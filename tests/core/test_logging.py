"""Logging configuration: JSON lines with the session and transaction ids."""

import json
import logging
from pathlib import Path

import pytest
import structlog

from mailgate.logging import LoggingSettings, bind_ids, configure_logging, unbind_ids


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
