"""Helpers shared by the end-to-end tests: processes in their own groups, polling, a simulated plug."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

CHARGECTL = str(Path(sys.executable).parent / "chargectl")
PRICE_PER_KWH = 10_000  # minor units; high so a few seconds of charging cost whole pennies


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CHARGECTL, *args], stdout=subprocess.PIPE, stderr=open(log, "wb"), env=env, start_new_session=True
    )


def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def sim_plug(tmp_path: Path) -> Iterator[dict[str, Any]]:
    proc = _spawn(
        ["sim", "--plugs", "1", "--gen", "2", "--profile", "idle", "--no-mdns", "--json", "--seed", "7"],
        dict(os.environ),
        tmp_path / "sim.log",
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        (plug,) = json.loads(line)["plugs"]
        yield plug
    finally:
        _kill(proc)


def expected_cost(energy_mwh: int) -> int:
    """What ``energy_mwh`` costs at PRICE_PER_KWH, rounded half up once (the tariff rule, done by hand)."""
    return int((Decimal(energy_mwh) * PRICE_PER_KWH / Decimal(1_000_000)).quantize(Decimal(1), ROUND_HALF_UP))
