"""Agent test fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog wired straight to ``chargectl.agent`` (the CLI's logging setup stops propagation)."""
    logger = logging.getLogger("chargectl.agent")
    old, propagate = logger.level, logger.propagate
    logger.propagate = False  # caplog also listens at the root: count each record once
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old)
        logger.propagate = propagate


@pytest.fixture
def busy_cpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Another process keeping every core busy (spinning), stopped by its process group afterwards."""
    import os
    import sys

    import backends  # scripts/ is on sys.path (tests/conftest.py)

    workdir = tmp_path_factory.mktemp("busy")
    spinners = [
        backends._spawn("busy", [sys.executable, "-c", "while True: pass"], 0, workdir)
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.stop()
