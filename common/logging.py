"""Logging for people and for log collectors: one handler on the ``chargectl`` logger, on stderr.

- ``rich`` (the default at a terminal): rich's columns, wrapped to the terminal.
- ``text`` (the default anywhere else): exactly one line per record, ``<ISO time> <LEVEL> <logger>:
  <message>``; newlines inside a message or a traceback are written as ``\\n`` so a record is never
  split. Under systemd (``JOURNAL_STREAM`` set) each line starts with its syslog priority ``<N>``, which
  journald strips and stores as the entry's priority (``journalctl -p warning`` filters on it).
- ``json``: one JSON object per line with ``time``, ``severity`` (Cloud Logging's field), ``logger``,
  ``message`` and, for an exception, ``exception`` (the whole traceback in one string).

``[logging] format = "auto" | "rich" | "text" | "json"`` and ``level`` pick them; ``-v`` means DEBUG.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from chargectl.common.config import build

__all__ = ["JsonFormatter", "LoggingSettings", "OneLineFormatter", "setup_logging", "syslog_priority"]

LogFormat = Literal["auto", "rich", "text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

# syslog(3) priorities by logging level: what journald reads from a ``<N>`` line prefix.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    """The ``[logging]`` table."""

    format: LogFormat = "auto"
    level: LogLevel = "info"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> LoggingSettings:
        return build(cls, data, prefix="logging")


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a logging level (DEBUG and below: 7)."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


def _iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class OneLineFormatter(logging.Formatter):
    """``<N>2026-01-01T00:00:00.000Z WARNING chargectl.x: message\\nTraceback...`` on one line."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        line = f"{_iso_time(record.created)} {record.levelname} {record.name}: {_one_line(text)}"
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``severity`` is the field Cloud Logging maps to its level."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso_time(record.created),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        line = json.dumps(data, ensure_ascii=False, default=str)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream: that flushes the previous stream, which may be closed
        super().emit(record)


def _rich_handler() -> logging.Handler:
    from rich.console import Console
    from rich.logging import RichHandler

    return RichHandler(
        console=Console(stderr=True),
        show_path=False,
        rich_tracebacks=False,
        markup=False,
        log_time_format="[%X]",
    )


def setup_logging(
    verbose: int = 0,
    settings: LoggingSettings | None = None,
    *,
    journal: bool = False,
    tty: bool | None = None,
) -> None:
    """Route ``chargectl.*`` loggers to stderr in the format ``settings`` asks for.

    ``journal``: stderr is connected to journald (``$JOURNAL_STREAM``), so ``auto`` means one-line text
    with priorities even if stderr looks like a terminal; ``tty`` defaults to ``sys.stderr.isatty()``.
    ``verbose`` 1+ means DEBUG whatever ``settings.level`` says.
    """
    settings = settings or LoggingSettings()
    if tty is None:
        tty = sys.stderr.isatty()
    fmt = settings.format
    if fmt == "auto":
        fmt = "rich" if tty and not journal else "text"
    handler: logging.Handler
    if fmt == "rich":
        handler = _rich_handler()
    else:
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter(journal) if fmt == "json" else OneLineFormatter(journal))
    level = logging.DEBUG if verbose > 0 else getattr(logging, settings.level.upper())
    logger = logging.getLogger("chargectl")
    for old in list(logger.handlers):
        if getattr(old, "_chargectl", False):
            logger.removeHandler(old)
    handler._chargectl = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = True  # records also reach the root logger (pytest caplog); root has no handler
