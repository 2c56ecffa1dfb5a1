"""Logging through rich: one handler on the ``chargectl`` logger, stderr, no tracebacks for expected errors."""

from __future__ import annotations

import logging

__all__ = ["setup_logging"]


def setup_logging(verbose: int = 0) -> None:
    """Route ``chargectl.*`` loggers to stderr via rich; ``verbose`` 0 = INFO... 1+ = DEBUG."""
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose > 0 else logging.INFO
    logger = logging.getLogger("chargectl")
    for handler in list(logger.handlers):
        if getattr(handler, "_chargectl", False):
            logger.removeHandler(handler)
    handler = RichHandler(
        console=Console(stderr=True),
        show_path=False,
        rich_tracebacks=False,
        markup=False,
        log_time_format="[%X]",
    )
    handler._chargectl = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = True  # records also reach the root logger (pytest caplog); root has no handler
