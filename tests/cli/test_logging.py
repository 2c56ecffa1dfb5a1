"""Logs a collector can read: one line per record (a traceback included), ISO time, level, priority."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.common.errors import ConfigError
from chargectl.common.logging import (
    JsonFormatter,
    LoggingSettings,
    OneLineFormatter,
    setup_logging,
    syslog_priority,
)

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _record_with_traceback(message: str = "tick failed\nsecond line") -> logging.LogRecord:
    try:
        raise ValueError("bad reading\nwith a newline")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    return logging.LogRecord("chargectl.hub", logging.ERROR, __file__, 1, message, None, exc_info)


class _Err:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[_Err]:
    """What the chargectl logger wrote to stderr (it writes to the current ``sys.stderr``)."""
    yield _Err(capsys)
    setup_logging(0, tty=False)


def test_a_traceback_stays_one_line_with_iso_time_and_level() -> None:
    line = OneLineFormatter().format(_record_with_traceback())
    assert "\n" not in line and "\r" not in line
    assert re.match(rf"^{ISO} ERROR chargectl\.hub: tick failed\\nsecond line\\nTraceback", line)
    assert "ValueError: bad reading\\nwith a newline" in line


def test_journal_lines_carry_the_syslog_priority() -> None:
    record = _record_with_traceback()
    assert OneLineFormatter(journal=True).format(record).startswith("<3>")
    assert [syslog_priority(lv) for lv in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


def test_json_lines_have_severity_and_the_whole_traceback_in_one_object() -> None:
    line = JsonFormatter().format(_record_with_traceback())
    assert "\n" not in line
    data = json.loads(line)
    assert data["severity"] == "ERROR" and data["logger"] == "chargectl.hub"
    assert data["message"] == "tick failed\nsecond line"
    assert data["exception"].startswith("Traceback") and "bad reading" in data["exception"]
    assert re.fullmatch(ISO, data["time"])


def test_off_a_terminal_every_record_is_one_line_even_long_ones(stderr: _Err) -> None:
    setup_logging(0, LoggingSettings(), journal=True, tty=True)  # journald wins over a tty
    log = logging.getLogger("chargectl.test")
    log.warning("plug %s refused: %s", "AA:BB:CC:DD:EE:FF", "x" * 300)
    log.debug("not shown at info")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1
    assert re.match(
        rf"^<4>{ISO} WARNING chargectl\.test: plug AA:BB:CC:DD:EE:FF refused: x{{300}}$", lines[0]
    )


def test_verbose_means_debug_and_level_setting_filters(stderr: _Err) -> None:
    setup_logging(0, LoggingSettings(format="text", level="warning"), tty=False)
    logging.getLogger("chargectl.t").info("hidden")
    setup_logging(1, LoggingSettings(format="text", level="warning"), tty=False)
    logging.getLogger("chargectl.t").debug("shown")
    err = stderr.getvalue()
    assert err.count("\n") == 1 and "DEBUG chargectl.t: shown" in err


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"format": "xml"}, "logging.format: must be one of 'auto', 'rich', 'text', 'json', got 'xml'"),
        ({"level": 3}, "logging.level: must be one of"),
        ({"fromat": "json"}, "unknown config key [logging] 'fromat'"),
    ],
)
def test_bad_logging_tables_are_refused_by_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        LoggingSettings.from_mapping(table)


def test_the_config_file_turns_on_json_for_any_command(tmp_path: Path, stderr: _Err) -> None:
    """``[logging] format = "json"`` applies once a command loads its config (Cloud Run has no journal)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[logging]\nformat = "json"\n')
    result = CliRunner().invoke(app, ["config", "show", "--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    logging.getLogger("chargectl.x").warning("out of credit")
    data = json.loads(stderr.getvalue().splitlines()[-1])
    assert data["severity"] == "WARNING" and data["message"] == "out of credit"
