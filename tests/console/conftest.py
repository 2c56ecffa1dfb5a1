"""Console fixtures: simulated plugs, `chargectl run` with its health server on a free port, and
headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import backends
import pytest
from console_helpers import CHROMIUM_ARGS, RunningSystem, _kill, _spawn, start_run


@pytest.fixture(scope="module")
def sim_plugs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Three simulated Gen2 plugs in one `chargectl sim` process (killed by process group)."""
    tmp = tmp_path_factory.mktemp("sim")
    proc = _spawn(
        ["sim", "--plugs", "3", "--gen", "2", "--profile", "idle", "--no-mdns", "--json", "--seed", "11"],
        dict(os.environ),
        tmp / "sim.log",
    )
    try:
        assert proc.stdout is not None
        yield list(json.loads(proc.stdout.readline())["plugs"])
    finally:
        _kill(proc)


@pytest.fixture(scope="module")
def running(
    sim_plugs: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """`chargectl run` over the simulated plugs, console on loopback without a token."""
    proc, system = start_run(tmp_path_factory.mktemp("run"), sim_plugs)
    try:
        yield system
    finally:
        _kill(proc, signal.SIGINT)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh headless Chromium profile (the system browser; Playwright downloads nothing)."""
    reason = backends.chromium_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=backends.CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()
